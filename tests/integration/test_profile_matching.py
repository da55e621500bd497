"""Matching on ingest: ingest() matches the killmails it stores from memory and
writes their matches itself; the deferred trigger does it for plain SQL writes.
Both must record the same matches and send the same notifications, and the
ingest path must follow rollbacks, savepoints and later writes in the same
transaction the way the trigger path does.
"""
import json
import random
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from conftest import ROOT, SHARED, dsn_for

JITA, AMARR = 30000142, 30002187
# Killmails copied by plain SQL get ids shifted by this much.
SHIFT = 1_000_000_000_000


def docs():
    out = list(json.loads((ROOT / "fixtures" / "killmails.json").read_text()))
    esi = SHARED / "data" / "esi_killmails"
    if esi.is_dir():
        out += [json.loads(f.read_text()) for f in sorted(esi.glob("[0-9]*.json"))]
    return out


def sde_dir():
    full = SHARED / "data" / "sde"
    return full if (full / "mapSolarSystems.csv").is_file() else ROOT / "fixtures" / "sde"


def km(kid, system=JITA, corp=98000001, attackers=((90000002, 98000002),), value=None):
    doc = {"killmail_id": kid, "killmail_time": "2026-11-20T12:00:00Z", "solar_system_id": system,
           "victim": {"character_id": 90000001, "corporation_id": corp, "ship_type_id": 587, "damage_taken": 100},
           "attackers": [{"character_id": ch, "corporation_id": co, "ship_type_id": 587, "damage_done": 100,
                          "final_blow": i == 0} for i, (ch, co) in enumerate(attackers)]}
    if value is not None:
        doc["zkb"] = {"totalValue": value}
    return Jsonb(doc)


def plain_insert(conn, kid, system, attacker_corp=98000002):
    """A killmail written by plain SQL (the trigger's job at commit)."""
    conn.execute("INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_character_id,"
                 " victim_corporation_id, victim_ship_type_id, total_value, value_source)"
                 " VALUES (%s, now(), %s, 90000001, 98000001, 587, 5, 'sql')", (kid, system))
    conn.execute("INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id,"
                 " ship_type_id, final_blow) VALUES (%s, 0, 90000002, %s, 587, true)", (kid, attacker_corp))


def matches(conn, kid):
    return [r[0] for r in conn.execute(
        "SELECT profile_id FROM killboard.profile_matches WHERE killmail_id = %s ORDER BY 1", (kid,))]


def drain(listener):
    """Notifications received so far (waits half a second for stragglers)."""
    return [n.payload for n in listener.notifies(timeout=0.5) if n.channel == "killboard_match"]


@pytest.fixture(scope="module")
def setup(dbname):
    with psycopg.connect(dsn_for(dbname), autocommit=True) as c:
        c.execute("SELECT count(*) FROM killboard.load_sde(%s)", (str(sde_dir()),))
        c.execute("SET killboard.match_on_ingest = off")
        # Ids from a first, throw-away load of the corpus, so profiles match.
        corpus = docs()
        c.execute("SELECT killboard.ingest_many(%s)", (Jsonb(corpus),))
        q = lambda s: [r[0] for r in c.execute(s)]
        pools = {
            "sys": q("SELECT DISTINCT solar_system_id FROM killboard.killmails"),
            "con": q("SELECT DISTINCT constellation_id FROM killboard.killmails WHERE constellation_id IS NOT NULL"),
            "reg": q("SELECT DISTINCT region_id FROM killboard.killmails WHERE region_id IS NOT NULL"),
            "chars": q("SELECT DISTINCT character_id FROM killboard.attackers WHERE character_id IS NOT NULL"),
            "corps": q("SELECT DISTINCT victim_corporation_id FROM killboard.killmails WHERE victim_corporation_id IS NOT NULL"),
            "allis": q("SELECT DISTINCT alliance_id FROM killboard.attackers WHERE alliance_id IS NOT NULL"),
            "ships": q("SELECT DISTINCT ship_type_id FROM killboard.attackers WHERE ship_type_id IS NOT NULL"),
            "groups": q("SELECT DISTINCT victim_ship_group_id FROM killboard.killmails WHERE victim_ship_group_id IS NOT NULL"),
        }
        for k in pools:
            pools[k] = sorted(pools[k]) or [1]
        c.execute("TRUNCATE killboard.killmails CASCADE")
        rnd = random.Random(7)
        pick = lambda k: rnd.choice(pools[k])
        tags = ["T1", "T2", "Faction", "Deadspace", "Officer", "Storyline", "Projectile", "Laser", "Hybrid", "Missile", "Drone"]
        bands = ["highsec", "lowsec", "nullsec", "wormhole", "pochven"]
        filters = [{}, {"solar_system_ids": [JITA]}, {"solar_system_ids": [AMARR]},
                   {"attacker_corporation_ids": [98000077]}]
        for g in range(400):
            kind = g % 12
            f = [
                lambda: {"solar_system_ids": [pick("sys"), pick("sys")]},
                lambda: {"victim_corporation_ids": [pick("corps")], "min_value": rnd.choice([0, 1e6, 1e8])},
                lambda: {rnd.choice(["attacker", "victim", "involved"]) + "_alliance_ids": [pick("allis")]},
                lambda: {"module_tags": [rnd.choice(tags)], "security_band": [rnd.choice(bands)]},
                lambda: {"involved_character_ids": [pick("chars"), pick("chars")]},
                lambda: {"region_ids": [pick("reg")], "victim_ship_group_ids": [pick("groups")]},
                lambda: {"any": [{"attacker_ship_type_ids": [pick("ships")]}, {"constellation_ids": [pick("con")]}]},
                lambda: {"attacker_ship_type_ids": [pick("ships")], "not": {"npc": True}},
                lambda: {"within_jumps": {"system_id": pick("sys"), "jumps": g % 3}},
                lambda: {"min_attackers": 1 + g % 15, "max_value": rnd.choice([1e7, 1e9, 1e12])},
                lambda: {rnd.choice(["solo", "npc", "awox"]): rnd.choice([True, False]),
                         "security_min": rnd.choice([-1.0, 0.0, 0.5])},
                lambda: {"all": [{"victim_ship_group_ids": [pick("groups")]}, {"not": {"security_band": ["highsec"]}}]},
            ][kind]()
            filters.append(f)
        with c.cursor() as cur:
            cur.executemany("INSERT INTO killboard.profiles (name, filter) VALUES (%s, %s)",
                            [(f"t{g}", Jsonb(f)) for g, f in enumerate(filters)])
        ids = {r[1]: r[0] for r in c.execute("SELECT profile_id, name FROM killboard.profiles")}
    return {"corpus": corpus, "everything": ids["t0"], "jita": ids["t1"], "amarr": ids["t2"],
            "corp77": ids["t3"]}


def test_ingest_matches_equal_trigger_matches(setup, connect):
    db = connect(autocommit=False)
    listener = connect()
    listener.execute("LISTEN killboard_match")
    corpus = setup["corpus"]
    # Ingest path: matched in ingest_many, at the call.
    db.execute("SELECT killboard.ingest_many(%s)", (Jsonb(corpus),))
    db.commit()
    ids = [r[0] for r in db.execute("SELECT killmail_id FROM killboard.killmails WHERE killmail_id < %s ORDER BY 1",
                                    (SHIFT,))]
    assert len(ids) == len({d.get("killmail_id") or d.get("package", {}).get("killID") for d in corpus})
    # Trigger path: the same rows copied by plain SQL under shifted ids; the
    # deferred trigger matches them at commit (attackers and items come after
    # the killmail rows, as they would in a COPY).
    for t in ("killmails", "attackers", "items"):
        db.execute(sql.SQL("CREATE TEMP TABLE {} AS SELECT * FROM killboard.{} WHERE killmail_id < %s").format(
            sql.Identifier("copy_" + t), sql.Identifier(t)), (SHIFT,))
        db.execute(sql.SQL("UPDATE {} SET killmail_id = killmail_id + %s").format(sql.Identifier("copy_" + t)), (SHIFT,))
        db.execute(sql.SQL("INSERT INTO killboard.{} SELECT * FROM {}").format(
            sql.Identifier(t), sql.Identifier("copy_" + t)))
    db.commit()

    pairs = db.execute("SELECT killmail_id, profile_id FROM killboard.profile_matches").fetchall()
    by_ingest = sorted((k, p) for k, p in pairs if k < SHIFT)
    by_trigger = sorted((k - SHIFT, p) for k, p in pairs if k >= SHIFT)
    assert len(by_ingest) > 5 * len(ids), "the profiles should match something"
    assert by_ingest == by_trigger
    # And both equal matching on demand.
    on_demand = sorted((k, p) for k in ids for (p,) in db.execute("SELECT * FROM killboard.match_profiles(%s::bigint)", (k,)))
    assert by_ingest == on_demand
    everything = setup["everything"]
    assert all((k, everything) in set(by_ingest) for k in ids)

    # The same notifications, byte for byte apart from the id.
    payloads = drain(listener)
    ingest_p = {json.loads(p)["killmail_id"]: p for p in payloads if json.loads(p)["killmail_id"] < SHIFT}
    trigger_p = {json.loads(p)["killmail_id"] - SHIFT: p for p in payloads if json.loads(p)["killmail_id"] >= SHIFT}
    assert sorted(ingest_p) == sorted(trigger_p) == ids
    for k in ids:
        assert trigger_p[k] == ingest_p[k].replace(f'"killmail_id" : {k},', f'"killmail_id" : {k + SHIFT},'), k
        assert sorted(json.loads(ingest_p[k])["profile_ids"]) == [p for kk, p in by_ingest if kk == k]

    # Re-delivery: nothing new, nothing announced.
    db.execute("SELECT killboard.ingest_many(%s)", (Jsonb(corpus),))
    db.commit()
    assert db.execute("SELECT count(*) FROM killboard.profile_matches").fetchone()[0] == len(pairs)
    assert drain(listener) == []


def test_rollback_and_savepoints(setup, connect):
    db = connect(autocommit=False)
    listener = connect()
    listener.execute("LISTEN killboard_match")
    jita = setup["jita"]

    # A rolled-back ingest leaves no matches and announces nothing.
    db.execute("SELECT killboard.ingest(%s)", (km(7_000_001),))
    assert jita in matches(db, 7_000_001)
    db.rollback()
    assert matches(db, 7_000_001) == []

    # Savepoint rolled back, then the same id written by plain SQL: the trigger
    # must not take it for one ingest already matched.
    db.execute("SAVEPOINT s")
    db.execute("SELECT killboard.ingest(%s)", (km(7_000_002, system=AMARR),))
    db.execute("ROLLBACK TO SAVEPOINT s")
    plain_insert(db, 7_000_002, JITA)
    db.commit()
    assert jita in matches(db, 7_000_002)
    assert setup["amarr"] not in matches(db, 7_000_002)

    # Released savepoint: matched once, announced once.
    db.execute("SAVEPOINT s")
    db.execute("SELECT killboard.ingest(%s)", (km(7_000_003),))
    db.execute("RELEASE SAVEPOINT s")
    db.commit()
    assert jita in matches(db, 7_000_003)

    # An exception block around ingest is a subtransaction too.
    db.execute("""DO $$ BEGIN
                    PERFORM killboard.ingest(%s::jsonb);
                    RAISE EXCEPTION 'undo';
                  EXCEPTION WHEN raise_exception THEN NULL; END $$""".replace("%s", "'" + json.dumps(km(7_000_004, system=AMARR).obj) + "'"))
    plain_insert(db, 7_000_004, JITA)
    db.commit()
    assert jita in matches(db, 7_000_004) and setup["amarr"] not in matches(db, 7_000_004)

    got = [json.loads(p) for p in drain(listener)]
    assert [n["killmail_id"] for n in got] == [7_000_002, 7_000_003, 7_000_004]
    assert got[1]["profile_ids"] == matches(db, 7_000_003)


def test_writes_after_ingest_in_the_same_transaction(setup, connect):
    db = connect(autocommit=False)
    jita, amarr, corp77 = setup["jita"], setup["amarr"], setup["corp77"]

    # UPDATE after ingest: the trigger matches the updated row at commit.
    db.execute("SELECT killboard.ingest(%s)", (km(7_100_001),))
    db.execute("UPDATE killboard.killmails SET solar_system_id = %s WHERE killmail_id = 7100001", (AMARR,))
    db.commit()
    assert amarr in matches(db, 7_100_001)

    # DELETE after ingest: nothing left.
    db.execute("SELECT killboard.ingest(%s)", (km(7_100_002),))
    db.execute("DELETE FROM killboard.killmails WHERE killmail_id = 7100002")
    db.commit()
    assert matches(db, 7_100_002) == []

    # DELETE, then the id again by plain SQL elsewhere: matched as the new row.
    db.execute("SELECT killboard.ingest(%s)", (km(7_100_003),))
    db.execute("DELETE FROM killboard.killmails WHERE killmail_id = 7100003")
    plain_insert(db, 7_100_003, AMARR)
    db.commit()
    got = matches(db, 7_100_003)
    assert amarr in got and jita not in got

    # An attacker added by plain SQL after ingest is seen at commit.
    db.execute("SELECT killboard.ingest(%s)", (km(7_100_004),))
    db.execute("INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id,"
               " ship_type_id, final_blow) VALUES (7100004, 1, 90000009, 98000077, 587, false)")
    db.commit()
    assert corp77 in matches(db, 7_100_004)

    # With match_on_ingest off nothing is matched, by ingest or at commit.
    db.execute("SET killboard.match_on_ingest = off")
    db.execute("SELECT killboard.ingest(%s)", (km(7_100_005),))
    db.commit()
    assert matches(db, 7_100_005) == []
    db.execute("RESET killboard.match_on_ingest")
    db.commit()


def test_writer_role_ingest_records_matches(setup, dbname, connect):
    name = "kb_pm_writer_" + uuid.uuid4().hex[:8]
    admin = connect()
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE killboard_writer").format(sql.Identifier(name)))
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(dsn_for(dbname), user=name), autocommit=True) as w:
            w.execute("SELECT killboard.ingest(%s)", (km(7_200_001),))
        assert setup["jita"] in matches(admin, 7_200_001)
    finally:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_truncate_cascades_to_ingested_matches(setup, connect):
    # (TRUNCATE right after an ingest in the same transaction is refused by
    # PostgreSQL: the killmails have pending trigger events.)
    db = connect(autocommit=False)
    db.execute("SELECT killboard.ingest(%s)", (km(7_300_001),))
    db.commit()
    assert setup["jita"] in matches(db, 7_300_001)
    db.execute("TRUNCATE killboard.killmails CASCADE")
    db.execute("SELECT killboard.ingest(%s)", (km(7_300_002),))
    db.commit()
    assert matches(db, 7_300_001) == []
    assert setup["jita"] in matches(db, 7_300_002)
    assert db.execute("SELECT count(DISTINCT killmail_id) FROM killboard.profile_matches").fetchone()[0] == 1


def test_many_matches_are_announced_in_chunks_like_the_trigger(setup, connect):
    db = connect(autocommit=False)
    listener = connect()
    listener.execute("LISTEN killboard_match")
    db.execute("INSERT INTO killboard.profiles (name, filter)"
               " SELECT 'chunk ' || g, '{\"solar_system_ids\": [30000142]}' FROM generate_series(1, 1100) g")
    db.commit()
    db.execute("SELECT killboard.ingest(%s)", (km(7_400_001),))
    db.commit()
    plain_insert(db, 7_400_001 + SHIFT, JITA)
    db.commit()
    got = drain(listener)
    ingest_p = [p for p in got if f'"killmail_id" : {7_400_001},' in p]
    trigger_p = [p for p in got if f'"killmail_id" : {7_400_001 + SHIFT},' in p]
    assert len(ingest_p) == 3, [len(p) for p in got]
    assert [p.replace(str(7_400_001 + SHIFT), str(7_400_001)) for p in trigger_p] == ingest_p
    ids = [i for p in ingest_p for i in json.loads(p)["profile_ids"]]
    assert ids == matches(db, 7_400_001) and len(ids) > 1100
