# pg_killboard front door. Everything installs what it needs first.
.PHONY: setup demo test stress psql install lint bench stop

setup:
	@bash scripts/setup.sh

install: setup
	PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config scripts/install.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@bash scripts/test.sh

stress: setup
	@bash scripts/stress.sh

psql:
	@scripts/cluster.sh psql

stop:
	@scripts/cluster.sh stop

lint:
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings

bench: setup
	@bash bench/run.sh
