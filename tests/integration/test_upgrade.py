"""Issue 7, upgrades: an older pg_killboard installed with data in place is
upgraded by ALTER EXTENSION ... UPDATE with its stats exact, and the upgraded
catalog equals a fresh install of the current version.

The catalog comparison is the guard for later changes: a function, table,
grant or setting added to the extension without a step in the upgrade script
shows up here as a difference, listed by name.
"""
import datetime as dt
import json
import uuid

import psycopg
import pytest
from psycopg import sql

from conftest import BASE_DSN, corpus, dsn_for, verify

OLDEST = "0.1.0"
ID_MASK = (1 << 59) - 1
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@pytest.fixture
def make_db():
    made = []

    def _make(version=None):
        name = "kbupg_" + uuid.uuid4().hex[:10]
        with psycopg.connect(BASE_DSN, autocommit=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        conn = psycopg.connect(dsn_for(name), autocommit=True)
        if version:
            conn.execute(sql.SQL("CREATE EXTENSION pg_killboard VERSION {}").format(sql.Literal(version)))
        else:
            conn.execute("CREATE EXTENSION pg_killboard")
        return conn

    yield _make
    with psycopg.connect(BASE_DSN, autocommit=True) as c:
        for name in made:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def current_version(conn):
    return conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_killboard'").fetchone()[0]


def km(kid, when, victim_corp, attackers, value=None):
    doc = {"killmail_id": kid, "killmail_time": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "solar_system_id": 30000142,
           "victim": {"character_id": 90100000 + kid % 1000, "corporation_id": victim_corp, "ship_type_id": 587,
                      "damage_taken": 100},
           "attackers": [{"character_id": ch, "corporation_id": co, "damage_done": 10, "final_blow": i == 0,
                          "ship_type_id": 588} for i, (ch, co) in enumerate(attackers)]}
    if value is not None:
        doc["zkb"] = {"totalValue": value, "points": 2}
    return doc


def entities(conn, limit=300):
    return conn.execute(
        "SELECT entity_key & %s AS id, CASE entity_key >> 59 WHEN 1 THEN 'character' WHEN 2 THEN 'corporation'"
        " WHEN 3 THEN 'alliance' WHEN 4 THEN 'faction' WHEN 5 THEN 'ship_type' WHEN 7 THEN 'solar_system' END"
        " FROM killboard.stats WHERE entity_key >> 59 IN (1, 2, 3, 4, 5, 7) ORDER BY id, entity_key LIMIT %s",
        (ID_MASK, limit)).fetchall()


def assert_exact(conn):
    ents = entities(conn)
    assert ents, "no stats at all"
    cols = "kills, losses, isk_destroyed, isk_lost, final_blows, damage_dealt, damage_taken, points, last_kill_time, last_loss_time"
    for eid, kind in ents:
        for period in ("all", "7d", "24h"):
            got = conn.execute(f"SELECT {cols} FROM killboard.entity_stats(%s, %s, %s)", (eid, kind, period)).fetchone()
            live = conn.execute(f"SELECT {cols} FROM killboard.entity_stats_live(%s, %s, %s)", (eid, kind, period)).fetchone()
            assert got == live, (eid, kind, period, got, live)
    assert verify(conn) == []


def stats_rows(conn, table="stats"):
    return conn.execute(f"SELECT entity_key, data FROM killboard.{table} ORDER BY 1, 2").fetchall()


def test_upgrade_with_data_in_place_keeps_stats_exact(make_db):
    """0.1.0 keyed the store by (entity_id, entity_kind); the update rekeys
    every row and appended delta. This library cannot write the old layout,
    so the old database gets its killmails with stats off and its stats rows
    from a current database that ingested the same killmails."""
    old = make_db(OLDEST)
    ref = make_db()
    assert old.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_killboard'").fetchone()[0] == OLDEST

    # The library on a database not yet updated: a clear error, nothing half written.
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="ALTER EXTENSION pg_killboard UPDATE"):
        old.execute("SELECT killboard.ingest(%s::jsonb)", (json.dumps(corpus()[0]),))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        old.execute("SELECT * FROM killboard.entity_stats(1, 'character', 'all')")
    assert old.execute("SELECT count(*) FROM killboard.killmails").fetchone()[0] == 0

    kms = corpus()[:200]
    extra = km(9100001, NOW - dt.timedelta(hours=3), 98910001, [(91910001, 98910002)], 1234.5)
    for conn in (old, ref):
        with conn.transaction():
            if conn is old:
                conn.execute("SET LOCAL killboard.maintain_stats = off")
            conn.execute("SELECT killboard.ingest_many(%s::jsonb)", (json.dumps(kms),))
            conn.execute("SELECT killboard.ingest(%s::jsonb)", (json.dumps(extra),))
            conn.execute("INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_corporation_id,"
                         " victim_ship_type_id, total_value) VALUES (9100002, %s, 30000142, 98910002, 587, 10)",
                         (NOW - dt.timedelta(days=2),))
            conn.execute("INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id,"
                         " damage_done, final_blow) VALUES (9100002, 0, 91910001, 98910001, 5, true)")
    ref.execute("SELECT killboard.advance_windows()")
    as_of, credit = ref.execute("SELECT as_of, kill_credit FROM killboard.stats_state").fetchone()
    rows = stats_rows(ref)
    # The old store as 0.1.0 kept it; one entity's record as an appended delta.
    moved = rows[len(rows) // 2]
    old_rows = [(key >> 59, key & ID_MASK, data) for key, data in rows]
    with old.transaction():
        with old.cursor() as cur:
            cur.executemany("INSERT INTO killboard.stats (entity_kind, entity_id, data) VALUES (%s, %s, %s)",
                            [r for r in old_rows if r[1] != moved[0] & ID_MASK or r[0] != moved[0] >> 59])
        old.execute("INSERT INTO killboard.stats_delta (entity_kind, entity_id, data) VALUES (%s, %s, %s)",
                    (moved[0] >> 59, moved[0] & ID_MASK, moved[1]))
        old.execute("UPDATE killboard.stats_state SET as_of = %s, kill_credit = %s, stale_since = NULL", (as_of, credit))

    old.execute("ALTER EXTENSION pg_killboard UPDATE")
    assert old.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_killboard'").fetchone()[0] == current_version(old)
    assert stats_rows(old) == [r for r in rows if r != moved]
    assert stats_rows(old, "stats_delta") == [moved]
    assert_exact(old)
    old.execute("SELECT killboard.advance_windows()")
    assert stats_rows(old, "stats_delta") == []
    assert_exact(old)
    ref.close()

    # Writes after the upgrade, by a writer that may no longer touch the stats tables.
    role = "kb_upg_writer_" + uuid.uuid4().hex[:8]
    old.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE killboard_writer").format(sql.Identifier(role)))
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(old.info.dsn, user=role), autocommit=True) as w:
            assert w.execute("SELECT has_table_privilege('killboard.stats', 'UPDATE')").fetchone()[0] is False
            w.execute("SELECT killboard.ingest_many(%s::jsonb)", (json.dumps(corpus()[200:260]),))
            w.execute("SELECT killboard.ingest(%s::jsonb)",
                      (json.dumps(km(9100003, NOW - dt.timedelta(minutes=5), 98910001, [(91910002, 98910002)], 99)),))
            w.execute("DELETE FROM killboard.killmails WHERE killmail_id = 9100002")
        assert_exact(old)
        assert old.execute("SELECT losses FROM killboard.entity_stats(98910001, 'corporation', 'all')").fetchone()[0] == 2
        assert old.execute("SELECT kills FROM killboard.entity_stats(98910002, 'corporation', 'all')").fetchone()[0] == 2
    finally:
        old.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    old.close()


# Everything about the extension's objects that a client or another version
# could depend on, keyed by a readable name.
SNAPSHOT = {
    "function": """
        SELECT p.oid::regprocedure::text,
               jsonb_build_object('kind', p.prokind, 'language', l.lanname,
                   'result', pg_get_function_result(p.oid), 'args', pg_get_function_arguments(p.oid),
                   'volatile', p.provolatile, 'strict', p.proisstrict, 'parallel', p.proparallel,
                   'security_definer', p.prosecdef, 'leakproof', p.proleakproof, 'config', p.proconfig,
                   'acl', p.proacl::text[], 'owner', pg_get_userbyid(p.proowner), 'cost', p.procost,
                   'rows', p.prorows, 'source', md5(p.prosrc), 'binary', p.probin)
          FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = 'killboard'::regnamespace""",
    "relation": """
        SELECT c.oid::regclass::text,
               jsonb_build_object('kind', c.relkind, 'acl', c.relacl::text[], 'options', c.reloptions,
                   'persistence', c.relpersistence, 'row_security', c.relrowsecurity,
                   'force_row_security', c.relforcerowsecurity, 'owner', pg_get_userbyid(c.relowner),
                   'comment', obj_description(c.oid, 'pg_class'))
          FROM pg_class c WHERE c.relnamespace = 'killboard'::regnamespace""",
    "column": """
        SELECT a.attrelid::regclass::text || '.' || a.attname,
               jsonb_build_object('type', format_type(a.atttypid, a.atttypmod), 'not_null', a.attnotnull,
                   'default', pg_get_expr(d.adbin, d.adrelid), 'identity', a.attidentity,
                   'generated', a.attgenerated, 'storage', a.attstorage, 'position', a.attnum,
                   'acl', a.attacl::text[], 'comment', col_description(a.attrelid, a.attnum))
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'killboard'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
           AND c.relkind IN ('r', 'v', 'm', 'p', 'f')""",
    "constraint": """
        SELECT conrelid::regclass::text || ' ' || conname,
               jsonb_build_object('def', pg_get_constraintdef(oid), 'deferrable', condeferrable,
                   'deferred', condeferred)
          FROM pg_constraint WHERE connamespace = 'killboard'::regnamespace""",
    "index": """
        SELECT indexrelid::regclass::text, to_jsonb(pg_get_indexdef(indexrelid))
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = 'killboard'::regnamespace""",
    "trigger": """
        SELECT t.tgrelid::regclass::text || ' ' || t.tgname,
               jsonb_build_object('def', pg_get_triggerdef(t.oid), 'enabled', t.tgenabled)
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'killboard'::regnamespace AND NOT t.tgisinternal""",
    "policy": """
        SELECT schemaname || '.' || tablename || ' ' || policyname,
               jsonb_build_object('permissive', permissive, 'roles', roles, 'cmd', cmd, 'qual', qual,
                   'with_check', with_check)
          FROM pg_policies WHERE schemaname = 'killboard'""",
    "sequence": """
        SELECT s.seqrelid::regclass::text,
               jsonb_build_object('type', format_type(s.seqtypid, NULL), 'start', s.seqstart,
                   'increment', s.seqincrement, 'min', s.seqmin, 'max', s.seqmax, 'cycle', s.seqcycle)
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
         WHERE c.relnamespace = 'killboard'::regnamespace""",
    "type": """
        SELECT t.oid::regtype::text, jsonb_build_object('kind', t.typtype, 'acl', t.typacl::text[])
          FROM pg_type t WHERE t.typnamespace = 'killboard'::regnamespace AND t.typrelid = 0
           AND t.typelem = 0""",
    "operator": """
        SELECT o.oid::regoperator::text, to_jsonb(o.oprcode::text)
          FROM pg_operator o WHERE o.oprnamespace = 'killboard'::regnamespace""",
    "schema": """
        SELECT nspname, jsonb_build_object('acl', nspacl::text[], 'owner', pg_get_userbyid(nspowner),
                   'comment', obj_description(oid, 'pg_namespace'))
          FROM pg_namespace WHERE nspname = 'killboard'""",
    "extension member": """
        SELECT pg_describe_object(d.classid, d.objid, d.objsubid), to_jsonb(d.deptype::text)
          FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_extension'::regclass
         WHERE e.extname = 'pg_killboard'""",
    "extension": """
        SELECT extname, jsonb_build_object('version', extversion, 'relocatable', extrelocatable,
                   'schema', extnamespace::regnamespace::text,
                   'config', (SELECT array_agg(c::regclass::text ORDER BY c::regclass::text) FROM unnest(extconfig) c))
          FROM pg_extension WHERE extname = 'pg_killboard'""",
    "initial privileges": """
        SELECT pg_describe_object(i.classoid, i.objoid, i.objsubid),
               jsonb_build_object('type', i.privtype, 'acl', i.initprivs::text[])
          FROM pg_init_privs i
         WHERE pg_describe_object(i.classoid, i.objoid, i.objsubid) ~ '(^| )killboard\\.|^schema killboard$'""",
    "role": """
        SELECT r.rolname, jsonb_build_object('login', r.rolcanlogin, 'inherit', r.rolinherit,
                   'member_of', (SELECT array_agg(g.rolname ORDER BY g.rolname) FROM pg_auth_members m
                                  JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid))
          FROM pg_roles r WHERE r.rolname IN ('killboard_reader', 'killboard_writer', 'killboard_admin')""",
}


def snapshot(conn):
    out = {}
    for what, query in SNAPSHOT.items():
        for name, value in conn.execute(query):
            key = (what, name)
            assert key not in out, f"duplicate snapshot key {key}"
            out[key] = value
    return out


def differences(fresh, upgraded):
    diffs = []
    for key in sorted(set(fresh) | set(upgraded)):
        what, name = key
        if key not in upgraded:
            diffs.append(f"{what} {name}: only in a fresh install (missing from the upgrade script)")
        elif key not in fresh:
            diffs.append(f"{what} {name}: only after the upgrade (dropped from the install script but not by the upgrade)")
        elif fresh[key] != upgraded[key]:
            f, u = fresh[key], upgraded[key]
            if isinstance(f, dict) and isinstance(u, dict):
                detail = "; ".join(f"{k}: fresh {f.get(k)!r} vs upgraded {u.get(k)!r}"
                                   for k in sorted(set(f) | set(u)) if f.get(k) != u.get(k))
            else:
                detail = f"fresh {f!r} vs upgraded {u!r}"
            diffs.append(f"{what} {name}: {detail}")
    return diffs


def test_upgraded_catalog_equals_a_fresh_install(make_db):
    fresh = make_db()
    upgraded = make_db(OLDEST)
    upgraded.execute("ALTER EXTENSION pg_killboard UPDATE")
    a, b = snapshot(fresh), snapshot(upgraded)
    assert sum(1 for (what, _) in a if what == "function") > 40
    assert sum(1 for (what, _) in a if what == "column") > 100
    diffs = differences(a, b)
    assert not diffs, (f"{len(diffs)} differences between a fresh install and {OLDEST} upgraded with "
                       "ALTER EXTENSION UPDATE; add the missing steps to the newest sql/pg_killboard--*--*.sql:\n  "
                       + "\n  ".join(diffs))
    fresh.close()
    upgraded.close()


def test_entity_stats_refuses_an_altered_row_type(make_db):
    """entity_stats fills its row type (killboard.entity_stats_result) by position. When that type
    is altered, in this session or another, a call is an error naming the type, never a row read
    the wrong way; put back, the same sessions read again."""
    conn = make_db()
    other = psycopg.connect(conn.info.dsn, autocommit=True)
    try:
        q = "SELECT kills FROM killboard.entity_stats(1, 'character')"
        assert conn.execute(q).fetchone()[0] == 0  # its row descriptor is now cached
        other.execute("ALTER TYPE killboard.entity_stats_result ALTER ATTRIBUTE kills TYPE text")
        for c in (conn, other):
            with pytest.raises(psycopg.errors.InternalError_, match="entity_stats_result"):
                c.execute(q)
        other.execute("ALTER TYPE killboard.entity_stats_result ADD ATTRIBUTE extra int")
        with pytest.raises(psycopg.errors.InternalError_, match="23 columns"):
            conn.execute(q)
        other.execute("ALTER TYPE killboard.entity_stats_result DROP ATTRIBUTE extra")
        other.execute("ALTER TYPE killboard.entity_stats_result ALTER ATTRIBUTE kills TYPE bigint")
        # A dropped attribute still takes a position: the shape stays refused.
        with pytest.raises(psycopg.errors.InternalError_, match="23 columns"):
            conn.execute(q)
        fresh = make_db()
        assert fresh.execute(q).fetchone()[0] == 0
    finally:
        other.close()
