"""Integration tests against a real PostgreSQL with pg_killboard installed.

The cluster is started by scripts/test.sh; KILLBOARD_TEST_DSN points at it.
Each test module gets a freshly created extension in its own database.
"""
import json
import os
import pathlib
import uuid

import psycopg
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("KILLBOARD_SHARED", ROOT.parent / "shared"))
BASE_DSN = os.environ.get("KILLBOARD_TEST_DSN", "host=/tmp port=28816 user=postgres dbname=postgres")


# The stats store's key: the kind code in the bits above 59, the id below
# (killboard-core stats::credit::EntityKey). SQL spellings for tests that look
# at the stored rows.
KINDS = {"character": 1, "corporation": 2, "alliance": 3, "faction": 4, "ship_type": 5,
         "ship_group": 6, "solar_system": 7, "constellation": 8, "region": 9}
ID_SQL = "(entity_key & 576460752303423487)"
KIND_SQL = "(entity_key >> 59)::int2"


def stats_key(kind, entity_id):
    return (KINDS[kind] << 59) | entity_id


def corpus():
    """The ESI killmails in shared/data, or skip with the reason."""
    d = SHARED / "data" / "esi_killmails"
    files = sorted(d.glob("[0-9]*.json")) if d.is_dir() else []
    if not files:
        pytest.skip(f"shared ESI killmails not found under {d}")
    return [json.loads(f.read_text()) for f in files]


def r2z2_example():
    f = SHARED / "data" / "zkb_examples" / "r2z2_example.json"
    if not f.is_file():
        pytest.skip(f"R2Z2 example not found at {f}")
    return json.loads(f.read_text())


@pytest.fixture(scope="module")
def dbname():
    name = "kbtest_" + uuid.uuid4().hex[:10]
    with psycopg.connect(BASE_DSN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(dsn_for(name), autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_killboard")
    yield name
    with psycopg.connect(BASE_DSN, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def dsn_for(name):
    return psycopg.conninfo.make_conninfo(BASE_DSN, dbname=name)


@pytest.fixture
def connect(dbname):
    conns = []

    def _connect(autocommit=True):
        c = psycopg.connect(dsn_for(dbname), autocommit=autocommit)
        conns.append(c)
        return c

    yield _connect
    for c in conns:
        c.close()


@pytest.fixture
def db(connect):
    return connect()


def verify(conn):
    return conn.execute("SELECT * FROM killboard.verify_stats()").fetchall()
