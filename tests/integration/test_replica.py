"""Issue 7.5: a streaming hot standby (pg_basebackup) of this module's own
cluster serves entity_stats, top_entities and on-demand profile matching
read-only, with the primary's results once replayed; writes there fail with
SQLSTATE 25006.
"""
import datetime as dt
import json
import shutil
import time

import psycopg
import pytest

from conftest import ROOT
from robust import BASE_PORT, PGBIN, SOCK, Cluster, as_pg, crash_lines, free_port, jb, rng_for, scaled, synth_killmail

KINDS = ["character", "corporation", "alliance", "ship_type", "solar_system"]
PERIODS = ["all", "90d", "30d", "7d", "24h"]
FILTERS = [
    {},
    {"victim_alliance_ids": [99900001]},
    {"any": [{"attacker_corporation_ids": [98900001]}, {"min_value": 1000000000}]},
    {"min_attackers": 3, "not": {"solar_system_ids": [30000142]}},
    {"solo": True},
]


@pytest.fixture(scope="module")
def pair():
    primary = Cluster("replica-primary", free_port(BASE_PORT + 3)).init("wal_level = replica\nmax_wal_senders = 4\n")
    primary.start()
    primary.create_db()
    standby = Cluster("replica-standby", free_port(primary.port + 1))
    yield primary, standby
    logs = primary.log() + standby.log()
    standby.remove()
    primary.remove()
    assert crash_lines(logs) == [], crash_lines(logs)


def load(conn, first, n):
    now = dt.datetime.now(dt.timezone.utc)
    rng = rng_for(f"replica{first}")
    kms = [synth_killmail(rng, first + i, now, 92_000_000) for i in range(n)]
    conn.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb(kms),))
    return kms


def wait_replayed(primary, standby):
    with primary.connect(autocommit=True) as p:
        lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    deadline = time.time() + 60
    with standby.connect(autocommit=True) as s:
        while time.time() < deadline:
            if s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                return
            time.sleep(0.1)
    raise AssertionError(f"standby did not replay up to {lsn}")


def snapshot(conn, kms, entities):
    """Everything a reader asks, as plain values."""
    out = {}
    for eid, kind in entities:
        for p in PERIODS:
            out[("stats", eid, kind, p)] = conn.execute("SELECT * FROM killboard.entity_stats(%s, %s, %s)", (eid, kind, p)).fetchone()
    for kind in KINDS:
        for metric in ("kills", "losses", "isk_destroyed"):
            out[("top", kind, metric)] = conn.execute(
                "SELECT * FROM killboard.top_entities(%s, 'all', %s, 10)", (kind, metric)).fetchall()
    ids = [eid for eid, _ in entities[:20]]
    out["many"] = conn.execute("SELECT * FROM killboard.entity_stats_many(%s, 'character', '30d')", (ids,)).fetchall()
    for k in kms:
        out[("match", k["killmail_id"])] = sorted(r[0] for r in conn.execute(
            "SELECT * FROM killboard.match_profiles(%s::bigint)", (k["killmail_id"],)))
        out[("match_doc", k["killmail_id"])] = sorted(r[0] for r in conn.execute(
            "SELECT * FROM killboard.match_profiles(%s::jsonb)", (jb(k),)))
    return out


def test_hot_standby_reads_like_the_primary(pair):
    primary, standby = pair
    n = scaled(200, 2000)
    with primary.connect(autocommit=True) as p:
        fixtures = json.loads((ROOT / "fixtures" / "killmails.json").read_text())
        p.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb(fixtures),))
        kms = load(p, 40_000_000, n)
        for i, f in enumerate(FILTERS):
            p.execute("INSERT INTO killboard.profiles (name, filter) VALUES (%s, %s::jsonb)", (f"replica {i}", jb(f)))
        p.execute("SELECT killboard.advance_windows()")

    # Base backup of the running primary, streaming from then on.
    if standby.dir.exists():
        shutil.rmtree(standby.dir)
    standby.dir.mkdir(parents=True)
    shutil.chown(standby.dir, "postgres", "postgres")
    standby.dir.chmod(0o700)
    as_pg(PGBIN / "pg_basebackup", "-h", SOCK, "-p", primary.port, "-U", "postgres", "-D", standby.dir, "-R", "-X", "stream", "-c", "fast")
    with open(standby.dir / "postgresql.conf", "a") as f:
        f.write(f"\nport = {standby.port}\nhot_standby = on\n")
    standby.start()

    # More writes after the base backup reach the standby by streaming.
    with primary.connect(autocommit=True) as p:
        kms += load(p, 41_000_000, n // 2)
        p.execute("UPDATE killboard.profiles SET filter = '{\"min_attackers\": 2}' WHERE name = 'replica 4'")
        p.execute("SELECT killboard.advance_windows()")
        entities = [(r[0], {1: "character", 2: "corporation", 3: "alliance", 5: "ship_type", 7: "solar_system"}[r[1]])
                    for r in p.execute("SELECT entity_key & 576460752303423487 AS id, (entity_key >> 59)::int2 FROM killboard.stats"
                                       " WHERE entity_key >> 59 IN (1, 2, 3, 5, 7) ORDER BY (entity_key & 576460752303423487) % 97, 1 LIMIT 60")]
        sample = kms[:: max(1, len(kms) // 40)]
        want = snapshot(p, sample, entities)
    wait_replayed(primary, standby)

    with standby.connect(autocommit=True) as s:
        assert s.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        got = snapshot(s, sample, entities)
        assert s.execute("SELECT count(*) FROM killboard.killmails").fetchone()[0] == len(kms) + len(fixtures)
        # verify_stats is read-only too: the replayed stats equal a recomputation there.
        assert s.execute("SELECT * FROM killboard.verify_stats()").fetchall() == []
    assert got.keys() == want.keys()
    diff = [k for k in want if want[k] != got[k]]
    assert diff == [], [(k, want[k], got[k]) for k in diff[:5]]
    # The profiles really matched something, and the stats are not all zero.
    assert any(v for k, v in want.items() if k[0] == "match")
    assert any(v and v[3] for k, v in want.items() if k[0] == "stats")


def test_writes_on_the_standby_fail_with_25006(pair):
    primary, standby = pair
    km = json.loads((ROOT / "fixtures" / "killmails.json").read_text())[0]
    with standby.connect(autocommit=True) as s:
        for sql, args in [("SELECT killboard.ingest(%s::jsonb)", (jb(dict(km, killmail_id=42_000_001)),)),
                          # Already there: a re-delivery with a new value is an UPDATE.
                          ("SELECT killboard.ingest(%s::jsonb)", (jb(dict(km, zkb=dict(km["zkb"], totalValue=1.0))),)),
                          ("SELECT killboard.ingest_many(%s::jsonb)", (jb([dict(km, killmail_id=42_000_002)]),)),
                          ("SELECT killboard.advance_windows()", ()),
                          ("SELECT killboard.rebuild_stats()", ()),
                          ("INSERT INTO killboard.profiles (name, filter) VALUES ('x', '{}')", ())]:
            with pytest.raises(psycopg.Error) as e:
                s.execute(sql, args)
            assert e.value.sqlstate == "25006", (sql, e.value.sqlstate, str(e.value))
        assert s.execute("SELECT 1").fetchone() == (1,)
