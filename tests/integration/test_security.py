"""Issue 7, privileges: what killboard_reader, killboard_writer and
killboard_admin can and cannot do, row security on profiles, and functions
that keep their pinned search_path against a hostile caller.

Each role is exercised through its own LOGIN role (a member of it), connected
as that user, so the checks are PostgreSQL's own privilege checks.
"""
import datetime as dt
import json
import time
import uuid

import psycopg
import pytest
from psycopg import errors, sql

from conftest import dsn_for, verify

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
MEMBERS = {"reader": "killboard_reader", "writer": "killboard_writer", "admin": "killboard_admin",
           "alice": "killboard_reader", "bob": "killboard_reader"}


def km(kid, victim_corp, attackers, when=None, value=None):
    """An ESI killmail: victim corporation `victim_corp`, attackers as (character, corporation, damage)."""
    when = when or NOW - dt.timedelta(hours=1)
    doc = {"killmail_id": kid, "killmail_time": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "solar_system_id": 30000142,
           "victim": {"corporation_id": victim_corp, "ship_type_id": 587, "damage_taken": 300},
           "attackers": [{"character_id": ch, "corporation_id": co, "damage_done": dmg, "final_blow": i == 0,
                          "ship_type_id": 588} for i, (ch, co, dmg) in enumerate(attackers)]}
    if value is not None:
        doc["zkb"] = {"totalValue": value, "points": 1, "labels": ["pvp", "loc:highsec"]}
    return json.dumps(doc)


STAT_COLS = "kills, losses, isk_destroyed, isk_lost, final_blows, damage_dealt, damage_taken, last_kill_time, last_loss_time"


def exact(conn, entities):
    """entity_stats equals the recomputation for every (id, kind) and period, and verify_stats is empty."""
    for eid, kind in entities:
        for period in ("all", "30d", "24h"):
            got = conn.execute(f"SELECT {STAT_COLS} FROM killboard.entity_stats(%s, %s, %s)", (eid, kind, period)).fetchone()
            live = conn.execute(f"SELECT {STAT_COLS} FROM killboard.entity_stats_live(%s, %s, %s)",
                                (eid, kind, period)).fetchone()
            assert got == live, (eid, kind, period, got, live)
    assert verify(conn) == []


def kills(conn, eid, kind="corporation", period="all"):
    return conn.execute("SELECT kills FROM killboard.entity_stats(%s, %s, %s)", (eid, kind, period)).fetchone()[0]


def stats_rows(conn):
    return conn.execute("SELECT entity_key, data FROM killboard.stats ORDER BY 1").fetchall()


@pytest.fixture(scope="module")
def logins(dbname):
    tag = uuid.uuid4().hex[:8]
    names = {who: f"kb_{who}_{tag}" for who in MEMBERS}
    with psycopg.connect(dsn_for(dbname), autocommit=True) as c:
        for who, name in names.items():
            c.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(sql.Identifier(name), sql.Identifier(MEMBERS[who])))
    yield names
    with psycopg.connect(dsn_for(dbname), autocommit=True) as c:
        for name in names.values():
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def as_role(dbname, logins):
    conns = []

    def _connect(who, autocommit=True):
        c = psycopg.connect(psycopg.conninfo.make_conninfo(dsn_for(dbname), user=logins[who]), autocommit=autocommit)
        conns.append(c)
        return c

    yield _connect
    for c in conns:
        c.close()


def denied(conn, query, params=None):
    """The statement fails with insufficient_privilege (42501); the session stays usable."""
    with pytest.raises(errors.InsufficientPrivilege):
        if conn.autocommit:
            conn.execute(query, params)
        else:
            with conn.transaction():
                conn.execute(query, params)


def test_every_function_pins_search_path(db):
    rows = db.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p"
        " WHERE p.pronamespace = 'killboard'::regnamespace ORDER BY 1").fetchall()
    assert len(rows) > 40
    # _stats_merge runs no SQL and is called per stats row; the two hot reads
    # are index probes that set the pinned path themselves for the rare SQL
    # they run (test_functions_ignore_a_hostile_search_path puts them on trial).
    pure = {"killboard._stats_merge(bytea,bytea)", "killboard.entity_stats(bigint,text,text)",
            "killboard.entity_stats_many(bigint[],text,text)"}
    bad = [(f, cfg) for f, cfg in rows
           if f not in pure and cfg != ["search_path=pg_catalog, killboard, pg_temp"]]
    assert bad == [], bad
    assert sorted((f, cfg) for f, cfg in rows if f in pure) == sorted((f, None) for f in pure)


def test_security_definer_functions_are_the_intended_ones(db):
    got = {r[0] for r in db.execute(
        "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'killboard'::regnamespace AND p.prosecdef")}
    # Stats store writers (flush, truncate, maintenance, readers that flush the
    # caller's own deltas) plus the profile, SDE and cache helpers.
    assert got == {"_stats_flush", "_stats_truncate", "_profile_matches_cascade", "rebuild_stats", "advance_windows", "verify_stats",
                   "stats_health", "stats_summary", "top_entities", "_mark_stats_stale", "_profiles_changed",
                   "_match_on_write", "_sde_changed", "character_affiliation", "corporation_history", "price",
                   "killmail_enrichment"}
    owners = {r[0] for r in db.execute(
        "SELECT DISTINCT pg_get_userbyid(p.proowner) FROM pg_proc p WHERE p.pronamespace = 'killboard'::regnamespace")}
    assert owners == {db.execute("SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'pg_killboard'").fetchone()[0]}


def test_reader_reads_but_cannot_ingest_or_alter_stats(db, as_role):
    db.execute("SELECT killboard.ingest(%s::jsonb)", (km(8100001, 98100001, [(91000001, 98100002, 300)], value=1000),))
    before = stats_rows(db)
    r = as_role("reader")
    assert r.execute("SELECT count(*) FROM killboard.killmails WHERE killmail_id = 8100001").fetchone()[0] == 1
    assert r.execute("SELECT count(*) FROM killboard.attackers WHERE killmail_id = 8100001").fetchone()[0] == 1
    assert r.execute("SELECT count(*) FROM killboard.stats").fetchone()[0] == len(before)
    r.execute("SELECT count(*) FROM killboard.stats_delta")
    r.execute("SELECT as_of FROM killboard.stats_state")
    assert kills(r, 98100002) == 1
    assert r.execute("SELECT count(*) FROM killboard.entity_stats_many(ARRAY[98100001, 98100002]::bigint[], 'corporation', 'all')").fetchone()[0] == 2
    assert r.execute("SELECT entity_id FROM killboard.top_entities('corporation', 'all', 'kills', 5)").fetchall() == [(98100002,)]
    r.execute("SELECT * FROM killboard.stats_health()")
    r.execute("SELECT * FROM killboard.ttl_cache_stats()")

    denied(r, "SELECT killboard.ingest(%s::jsonb)", (km(8100002, 98100001, [(91000001, 98100002, 1)]),))
    denied(r, "SELECT killboard.ingest_many(%s::jsonb)", ("[" + km(8100003, 98100001, [(91000001, 98100002, 1)]) + "]",))
    denied(r, "INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_ship_type_id)"
              " VALUES (8100004, now(), 30000142, 587)")
    denied(r, "UPDATE killboard.killmails SET total_value = 1 WHERE killmail_id = 8100001")
    denied(r, "DELETE FROM killboard.killmails WHERE killmail_id = 8100001")
    for table in ("stats", "stats_delta"):
        denied(r, f"INSERT INTO killboard.{table} (entity_key, data) VALUES (1, '\\x00')")
        denied(r, f"UPDATE killboard.{table} SET data = data")
        denied(r, f"DELETE FROM killboard.{table}")
    denied(r, "UPDATE killboard.stats_state SET as_of = now() - interval '1 year'")
    for f in ("rebuild_stats()", "advance_windows()", "verify_stats(NULL)", "recompute_values(NULL)",
              "cleanup_caches()", "load_sde('/nonexistent')"):
        denied(r, f"SELECT killboard.{f}")
    assert stats_rows(db) == before


def test_writer_ingests_and_inserts_with_exact_stats_but_cannot_touch_stats(db, as_role):
    w = as_role("writer")
    w.execute("SELECT killboard.ingest(%s::jsonb)", (km(8200001, 98200001, [(92000001, 98200002, 100)], value=500.5),))
    w.execute("SELECT killboard.ingest_many(%s::jsonb)",
              ("[" + km(8200002, 98200002, [(92000002, 98200001, 50), (92000001, 98200002, 70)]) + "]",))
    # Plain SQL in one transaction, with a savepoint rolled back.
    with w.transaction():
        w.execute("INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_corporation_id,"
                  " victim_ship_type_id, total_value) VALUES (8200003, now() - interval '2 hours', 30000142, 98200001, 587, 42)")
        w.execute("INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id,"
                  " damage_done, final_blow) VALUES (8200003, 0, 92000003, 98200002, 10, true)")
        try:
            with w.transaction():
                w.execute("INSERT INTO killboard.attackers (killmail_id, attacker_index, corporation_id, damage_done)"
                          " VALUES (8200003, 1, 98200003, 5)")
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass
        # Read-your-writes inside the transaction, through a reader that flushes first.
        top = dict(w.execute("SELECT entity_id, kills FROM killboard.top_entities('corporation', 'all', 'kills', 10)").fetchall())
        assert top.get(98200002) == 3 and 98200003 not in top, top
    w.execute("UPDATE killboard.killmails SET total_value = 99 WHERE killmail_id = 8200003")
    w.execute("DELETE FROM killboard.killmails WHERE killmail_id = 8200002")
    assert kills(w, 98200002) == 2
    assert kills(w, 98200003) == 0
    ents = [(98200001, "corporation"), (98200002, "corporation"), (98200003, "corporation"),
            (92000001, "character"), (92000002, "character"), (92000003, "character"), (30000142, "solar_system")]
    exact(db, ents)

    before = stats_rows(db)
    for table in ("stats", "stats_delta"):
        denied(w, f"INSERT INTO killboard.{table} (entity_key, data) VALUES (1, '\\x00')")
        denied(w, f"UPDATE killboard.{table} SET data = data")
        denied(w, f"DELETE FROM killboard.{table}")
        denied(w, f"TRUNCATE killboard.{table}")
    denied(w, "UPDATE killboard.stats_state SET as_of = now() - interval '1 year'")
    denied(w, "TRUNCATE killboard.killmails CASCADE")
    for f in ("rebuild_stats()", "advance_windows()", "verify_stats(NULL)", "schedule_maintenance()",
              "unschedule_maintenance()", "requeue_parked(NULL)", "load_sde('/nonexistent')"):
        denied(w, f"SELECT killboard.{f}")
    denied(w, "UPDATE killboard.cache_settings SET ttl = interval '1 second'")
    assert stats_rows(db) == before
    # What the sidecar needs as a writer.
    assert w.execute("SELECT killboard._store_affiliations('[{\"character_id\": 92000001, \"corporation_id\": 98200002}]')"
                     ).fetchone()[0] == 1
    w.execute("SELECT * FROM killboard.cleanup_caches()")
    w.execute("SELECT killboard.queue_missing_prices()")
    w.execute("INSERT INTO killboard.feed_state (feed, sequence) VALUES ('r2z2', 1)"
              " ON CONFLICT (feed) DO UPDATE SET sequence = excluded.sequence")
    # The sidecar's claim and completion of fetch jobs (sidecar/src/worker.rs); a cache miss queues one.
    w.execute("SELECT killboard.character_affiliation(92000009)")
    claimed = w.execute("UPDATE killboard.fetch_queue q SET attempts = q.attempts + 1"
                        " FROM (SELECT job_id FROM killboard.fetch_queue WHERE NOT parked"
                        "       ORDER BY job_id LIMIT 10 FOR UPDATE SKIP LOCKED) c"
                        " WHERE q.job_id = c.job_id RETURNING q.job_id").fetchall()
    assert claimed, "the cache miss queued nothing to claim"
    w.execute("DELETE FROM killboard.fetch_queue WHERE job_id = ANY(%s)", ([r[0] for r in claimed],))


def test_writer_flush_never_waits_for_rows_held_by_another_transaction(db, connect, as_role):
    # The merge path throughout (a one-killmail transaction would append).
    db.execute("SET killboard.stats_append_max_entities = 0")
    db.execute("SELECT killboard.ingest(%s::jsonb)", (km(8300001, 98300001, [(93000001, 98300002, 10)]),))
    held = "SELECT count(*) FROM killboard.stats_delta WHERE (entity_key & 576460752303423487) IN (98300001, 98300002)"
    n0 = db.execute(held).fetchone()[0]
    w = as_role("writer")
    # Writers cannot even lock stats rows (FOR UPDATE needs UPDATE).
    denied(w, "SELECT 1 FROM killboard.stats WHERE entity_key = 1 FOR UPDATE")
    w.execute("SET killboard.stats_append_max_entities = 0")
    w.execute("SET lock_timeout = '5s'")
    holder = connect(autocommit=False)
    holder.execute("SELECT 1 FROM killboard.stats WHERE (entity_key & 576460752303423487) IN (98300001, 98300002) FOR UPDATE")
    # A new killmail's flush merges in place where it can and appends a delta
    # for each row the holder has: it never waits (lock_timeout would fire).
    assert w.execute("SELECT killboard.ingest(%s::jsonb)",
                     (km(8300002, 98300001, [(93000002, 98300002, 10)]),)).fetchone() == (8300002,)
    assert db.execute(held).fetchone()[0] == n0 + 2
    assert kills(db, 98300002) == 2
    assert db.execute("SELECT losses FROM killboard.entity_stats(98300001, 'corporation', 'all')").fetchone()[0] == 2
    holder.rollback()
    db.execute("SELECT killboard.advance_windows()")
    n0 = db.execute(held).fetchone()[0]
    assert kills(db, 98300002) == 2
    # A removal never waits: rows someone holds get an append-only delta.
    holder.execute("SELECT 1 FROM killboard.stats WHERE (entity_key & 576460752303423487) IN (98300001, 98300002) FOR UPDATE")
    w.execute("DELETE FROM killboard.killmails WHERE killmail_id = 8300001")
    assert db.execute(held).fetchone()[0] == n0 + 2
    holder.rollback()
    assert kills(db, 98300002) == 1
    assert db.execute("SELECT losses FROM killboard.entity_stats(98300001, 'corporation', 'all')").fetchone()[0] == 1
    exact(db, [(98300001, "corporation"), (98300002, "corporation"), (93000002, "character")])


def test_admin_maintains_but_writes_stats_only_through_functions(db, as_role):
    db.execute("SELECT killboard.ingest(%s::jsonb)", (km(8400001, 98400001, [(94000001, 98400002, 10)]),))
    adm = as_role("admin")
    assert adm.execute("SELECT killboard.rebuild_stats()").fetchone()[0] > 0
    adm.execute("SELECT killboard.advance_windows()")
    assert adm.execute("SELECT * FROM killboard.verify_stats()").fetchall() == []
    adm.execute("SELECT * FROM killboard.schedule_maintenance()")
    adm.execute("SELECT killboard.unschedule_maintenance()")
    adm.execute("SELECT killboard.requeue_parked()")
    adm.execute("UPDATE killboard.cache_settings SET ttl = ttl WHERE cache = 'affiliation'")
    adm.execute("INSERT INTO killboard.sde_regions (region_id, name) VALUES (19000001, 'Test region')")
    adm.execute("DELETE FROM killboard.sde_regions WHERE region_id = 19000001")
    adm.execute("SELECT killboard.ingest(%s::jsonb)", (km(8400002, 98400001, [(94000001, 98400002, 10)]),))
    denied(adm, "UPDATE killboard.stats SET data = data")
    denied(adm, "DELETE FROM killboard.stats_delta")
    denied(adm, "UPDATE killboard.stats_state SET as_of = now()")
    # TRUNCATE rebuilds the stats (SECURITY DEFINER trigger); rolled back here.
    with adm.transaction(force_rollback=True):
        adm.execute("TRUNCATE killboard.killmails, killboard.attackers, killboard.items, killboard.profile_matches")
        assert kills(adm, 98400002) == 0
        assert adm.execute("SELECT count(*) FROM killboard.stats").fetchone()[0] == 0
    assert kills(adm, 98400002) == 2
    exact(db, [(98400001, "corporation"), (98400002, "corporation"), (94000001, "character")])


def test_advance_without_the_owners_rights_does_not_write_around_them(db, as_role, logins):
    """advance_windows() writes the stats straight to the heap as its owner. Run
    by a role that may not write killboard.stats (the function made SECURITY
    INVOKER here, as it is in a database not yet updated from 0.1.0), it is
    denied like the SQL it replaced, and nothing changes."""
    as_of = db.execute("SELECT as_of FROM killboard.stats_state").fetchone()[0]
    # Leaves the 24h window at the next advance: a row to rewrite.
    db.execute("SELECT killboard.ingest(%s::jsonb)",
               (km(8700001, 98700001, [(97000001, 98700002, 10)], when=as_of - dt.timedelta(days=1) + dt.timedelta(seconds=2)),))
    time.sleep(3)
    bob = logins["bob"]
    db.execute("ALTER FUNCTION killboard.advance_windows() SECURITY INVOKER")
    try:
        # Everything else the advance touches, so the stats rows are what is refused.
        db.execute(sql.SQL("GRANT EXECUTE ON FUNCTION killboard.advance_windows() TO {}").format(sql.Identifier(bob)))
        db.execute(sql.SQL("GRANT SELECT, DELETE ON killboard.stats_delta TO {}").format(sql.Identifier(bob)))
        db.execute(sql.SQL("GRANT UPDATE ON killboard.stats_state TO {}").format(sql.Identifier(bob)))
        before = stats_rows(db)
        denied(as_role("bob"), "SELECT killboard.advance_windows()")
        assert stats_rows(db) == before
    finally:
        db.execute("ALTER FUNCTION killboard.advance_windows() SECURITY DEFINER")
        for what in ("FUNCTION killboard.advance_windows()", "TABLE killboard.stats_delta", "TABLE killboard.stats_state"):
            db.execute(sql.SQL("REVOKE ALL ON " + what + " FROM {}").format(sql.Identifier(bob)))
    db.execute("SELECT killboard.advance_windows()")
    assert kills(db, 98700002, period="24h") == 0
    exact(db, [(98700001, "corporation"), (98700002, "corporation"), (97000001, "character")])


def test_profiles_are_visible_and_editable_only_by_their_owner(db, as_role, logins):
    alice, bob, adm = as_role("alice"), as_role("bob"), as_role("admin")
    pa = alice.execute("INSERT INTO killboard.profiles (name, filter) VALUES ('a', '{}') RETURNING profile_id").fetchone()[0]
    pb = bob.execute("INSERT INTO killboard.profiles (name, filter) VALUES ('b', '{}') RETURNING profile_id").fetchone()[0]
    assert alice.execute("SELECT profile_id, owner FROM killboard.profiles").fetchall() == [(pa, logins["alice"])]
    assert bob.execute("SELECT profile_id FROM killboard.profiles").fetchall() == [(pb,)]
    assert alice.execute("UPDATE killboard.profiles SET name = 'mine now' WHERE profile_id = %s", (pb,)).rowcount == 0
    assert alice.execute("DELETE FROM killboard.profiles WHERE profile_id = %s", (pb,)).rowcount == 0
    assert alice.execute("UPDATE killboard.profiles SET name = 'a2' WHERE profile_id = %s", (pa,)).rowcount == 1
    # Neither a profile for someone else nor giving one away.
    denied(alice, "INSERT INTO killboard.profiles (name, owner) VALUES ('x', %s)", (logins["bob"],))
    denied(alice, "UPDATE killboard.profiles SET owner = %s WHERE profile_id = %s", (logins["bob"], pa))
    assert db.execute("SELECT name, owner FROM killboard.profiles WHERE profile_id = %s", (pb,)).fetchone() == ("b", logins["bob"])
    # Matches: each owner sees their own; admin sees all and edits anyone's profile.
    db.execute("SELECT killboard.ingest(%s::jsonb)", (km(8500001, 98500001, [(95000001, 98500002, 10)]),))
    assert alice.execute("SELECT * FROM killboard.match_profiles(8500001::bigint)").fetchall() == [(pa,)]
    assert alice.execute("SELECT profile_id FROM killboard.profile_matches WHERE killmail_id = 8500001").fetchall() == [(pa,)]
    assert {r[0] for r in adm.execute("SELECT profile_id FROM killboard.profiles")} >= {pa, pb}
    assert {r[0] for r in adm.execute("SELECT * FROM killboard.match_profiles(8500001::bigint)")} >= {pa, pb}
    assert adm.execute("UPDATE killboard.profiles SET enabled = false WHERE profile_id = %s", (pb,)).rowcount == 1
    denied(bob, "DELETE FROM killboard.profile_matches")
    assert bob.execute("DELETE FROM killboard.profiles WHERE profile_id = %s", (pb,)).rowcount == 1


EVIL = r"""
CREATE SCHEMA evil;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
CREATE TABLE evil.calls (fn text NOT NULL, at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp());
GRANT INSERT, SELECT ON evil.calls TO PUBLIC;
-- Each trap records the call and then behaves like the built-in it shadows,
-- so a call shows up in evil.calls instead of merely breaking something.
CREATE FUNCTION evil.jsonb_array_elements_text(j jsonb) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN INSERT INTO evil.calls (fn) VALUES ('jsonb_array_elements_text'); RETURN QUERY SELECT pg_catalog.jsonb_array_elements_text(j); END $$;
CREATE FUNCTION evil.to_timestamp(x double precision) RETURNS timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN INSERT INTO evil.calls (fn) VALUES ('to_timestamp'); RETURN pg_catalog.to_timestamp(x); END $$;
CREATE FUNCTION evil.now() RETURNS timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN INSERT INTO evil.calls (fn) VALUES ('now'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION evil.unnest(a anyarray) RETURNS SETOF anyelement
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN INSERT INTO evil.calls (fn) VALUES ('unnest'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
CREATE FUNCTION evil.pg_notify(c text, p text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN INSERT INTO evil.calls (fn) VALUES ('pg_notify'); PERFORM pg_catalog.pg_notify(c, p); END $$;
CREATE FUNCTION evil.int8eq(a bigint, b bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN INSERT INTO evil.calls (fn) VALUES ('=(bigint,bigint)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8eq);
CREATE FUNCTION evil.int2eq(a smallint, b smallint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN INSERT INTO evil.calls (fn) VALUES ('=(smallint,smallint)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR evil.= (LEFTARG = smallint, RIGHTARG = smallint, FUNCTION = evil.int2eq);
"""
EVIL_PATH = "SET search_path = evil, pg_catalog, killboard, public"


def evil_calls(conn):
    return conn.execute("SELECT fn FROM evil.calls ORDER BY at").fetchall()


def test_functions_ignore_a_hostile_search_path(db, as_role):
    db.execute(EVIL)
    try:
        # The traps work: a caller's own unqualified SQL lands in them.
        with db.transaction(force_rollback=True):
            db.execute(EVIL_PATH)
            db.execute("SELECT 1::bigint = 2::bigint, now(), to_timestamp(0::float8)")
            assert {r[0] for r in evil_calls(db)} == {"=(bigint,bigint)", "now", "to_timestamp"}
        # And an extension function without its pinned path would land in them too.
        with db.transaction(force_rollback=True):
            db.execute("ALTER FUNCTION killboard.ingest(jsonb) RESET search_path")
            db.execute(EVIL_PATH)
            db.execute("SELECT killboard.ingest(%s::jsonb)", (km(8600001, 98600001, [(96000001, 98600002, 1)], value=1),))
            called = {r[0] for r in evil_calls(db)}
            assert {"jsonb_array_elements_text", "to_timestamp"} <= called, called
        assert evil_calls(db) == []

        db.execute("INSERT INTO killboard.profiles (name, filter) VALUES ('evil test', '{}')")
        w, r, adm = as_role("writer"), as_role("reader"), as_role("admin")
        for c in (w, r, adm):
            c.execute(EVIL_PATH)
            assert c.execute("SHOW search_path").fetchone()[0].startswith("evil")
        w.execute("SELECT killboard.ingest(%s::jsonb)", (km(8600002, 98600001, [(96000001, 98600002, 7)], value=12.5),))
        w.execute("SELECT killboard.ingest_many(%s::jsonb)",
                  ("[" + km(8600003, 98600002, [(96000002, 98600001, 3)], value=2) + "]",))
        with w.transaction():
            w.execute("INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_corporation_id,"
                      " victim_ship_type_id) VALUES (8600004, '2020-01-01Z', 30000142, 98600001, 587)")
            w.execute("INSERT INTO killboard.attackers (killmail_id, attacker_index, corporation_id, damage_done, final_blow)"
                      " VALUES (8600004, 0, 98600002, 1, true)")
            # The caller's own operators are qualified: only the extension's SQL is on trial.
            w.execute("UPDATE killboard.attackers SET damage_done = 2 WHERE killmail_id OPERATOR(pg_catalog.=) 8600004")
            w.execute("SELECT * FROM killboard.top_entities('corporation', 'all', 'kills', 3)")
        w.execute("DELETE FROM killboard.killmails WHERE killmail_id OPERATOR(pg_catalog.=) 8600003")
        w.execute("SELECT killboard._store_prices('janice', 10000002, '[{\"type_id\": 587, \"price\": 1}]')")
        w.execute("SELECT killboard.recompute_values()")
        assert kills(r, 98600002) == 2
        # The unpinned reads on trial: a victim that lives only in stats_delta
        # loses its only loss again, so the reader recomputes its last loss
        # time from the killmails (SQL) under the caller's hostile path.
        w.execute("SELECT killboard.ingest(%s::jsonb)", (km(8600005, 98600003, [(96000001, 98600002, 1)], value=3),))
        w.execute("DELETE FROM killboard.killmails WHERE killmail_id OPERATOR(pg_catalog.=) 8600005")
        for q in ("SELECT losses, last_loss_time FROM killboard.entity_stats(98600003, 'corporation', 'all')",
                  "SELECT losses, last_loss_time FROM killboard.entity_stats_many(ARRAY[98600003]::int8[], 'corporation', 'all')"):
            assert r.execute(q).fetchone() == (0, None)
        assert evil_calls(db) == []
        r.execute("SELECT * FROM killboard.entity_stats_live(98600002, 'corporation', '30d')")
        r.execute("SELECT * FROM killboard.match_profiles(8600002::bigint)")
        r.execute("SELECT killboard.character_affiliation(96000001)")
        r.execute("SELECT killboard.price(587)")
        r.execute("SELECT * FROM killboard.ttl_cache_stats()")
        adm.execute("SELECT killboard.advance_windows()")
        assert adm.execute("SELECT * FROM killboard.verify_stats()").fetchall() == []
        adm.execute("SELECT killboard.rebuild_stats()")
        assert evil_calls(db) == []
        exact(db, [(98600001, "corporation"), (98600002, "corporation"), (96000001, "character")])
    finally:
        db.execute("DROP SCHEMA evil CASCADE")
