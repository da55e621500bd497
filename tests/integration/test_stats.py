"""Issue 3 acceptance: exact stats from every write path, windows, credit modes."""
import copy
import datetime as dt
import json
import threading
import time
from collections import defaultdict
from decimal import Decimal

import psycopg
import pytest

from conftest import corpus, r2z2_example, stats_key, verify

PERIODS = {"all": None, "90d": 90, "30d": 30, "14d": 14, "7d": 7, "24h": 1}
KINDS = ["character", "corporation", "alliance", "faction", "ship_type", "solar_system"]


def jb(v):
    return json.dumps(v)


def independent_stats(conn, mode="involved"):
    """Recompute kills/losses/ISK/etc. from the stored rows in Python (not via the extension)."""
    as_of = conn.execute("SELECT as_of FROM killboard.stats_state").fetchone()[0]
    kms = conn.execute(
        "SELECT killmail_id, killmail_time, solar_system_id, coalesce(total_value,0), coalesce(points,0), npc, solo,"
        " victim_character_id, victim_corporation_id, victim_alliance_id, victim_faction_id, victim_ship_type_id,"
        " victim_damage_taken FROM killboard.killmails").fetchall()
    att = defaultdict(list)
    for r in conn.execute("SELECT killmail_id, character_id, corporation_id, alliance_id, faction_id, ship_type_id,"
                          " damage_done, final_blow FROM killboard.attackers ORDER BY killmail_id, attacker_index"):
        att[r[0]].append(r[1:])
    out = defaultdict(lambda: defaultdict(int))  # (kind, id, period) -> metric -> value
    last = defaultdict(lambda: [None, None])
    for (kid, t, sys_id, value, points, npc, solo, vch, vco, val, vfa, vst, vdmg) in kms:
        periods = [p for p, d in PERIODS.items() if d is None or t > as_of - dt.timedelta(days=d)]
        attackers = att[kid]
        credited = {}
        for (ch, co, al, fa, st, dmg, fb) in attackers:
            if mode == "final_blow" and not fb:
                continue
            for kind, eid in zip(["character", "corporation", "alliance", "faction", "ship_type"], [ch, co, al, fa, st]):
                if eid is None:
                    continue
                c = credited.setdefault((kind, eid), [0, False])
                c[0] += dmg
                c[1] |= fb
        credited[("solar_system", sys_id)] = [0, False]
        for (kind, eid), (dmg, fb) in credited.items():
            for p in periods:
                m = out[(kind, eid, p)]
                m["kills"] += 1
                m["isk_destroyed"] += value
                m["solo_kills"] += int(solo)
                m["npc_kills"] += int(npc)
                m["final_blows"] += int(fb)
                m["damage_dealt"] += dmg
                m["points"] += points
                m["attackers_sum"] += len(attackers)
            lk = last[(kind, eid)]
            lk[0] = t if lk[0] is None else max(lk[0], t)
        for kind, eid in zip(["character", "corporation", "alliance", "faction", "ship_type"], [vch, vco, val, vfa, vst]):
            if eid is None:
                continue
            for p in periods:
                m = out[(kind, eid, p)]
                m["losses"] += 1
                m["isk_lost"] += value
                m["solo_losses"] += int(solo)
                m["npc_losses"] += int(npc)
                m["damage_taken"] += vdmg
            ll = last[(kind, eid)]
            ll[1] = t if ll[1] is None else max(ll[1], t)
    return out, last


COLS = ["kills", "losses", "isk_destroyed", "isk_lost", "solo_kills", "solo_losses", "npc_kills", "npc_losses",
        "final_blows", "points", "damage_dealt", "damage_taken"]


def check_all_entities(conn, mode="involved"):
    expected, last = independent_stats(conn, mode)
    entities = {(k, i) for (k, i, _) in expected}
    assert entities, "no entities to check"
    checked = 0
    for kind, eid in sorted(entities):
        for p in PERIODS:
            q = ("SELECT kills, losses, isk_destroyed, isk_lost, solo_kills, solo_losses, npc_kills, npc_losses,"
                 " final_blows, points, damage_dealt, damage_taken, last_kill_time, last_loss_time, avg_attackers"
                 " FROM killboard.{}(%s, %s, %s)")
            got = conn.execute(q.format("entity_stats"), (eid, kind, p)).fetchone()
            live = conn.execute(q.format("entity_stats_live"), (eid, kind, p)).fetchone()
            assert got == live, (kind, eid, p, got, live)
            e = expected.get((kind, eid, p), {})
            want = tuple(Decimal(e.get(c, 0)) if c.startswith("isk") else e.get(c, 0) for c in COLS)
            assert tuple(got[:12]) == want, (kind, eid, p, got, want)
            lk, ll = last[(kind, eid)]
            assert got[12] == (lk if e.get("kills") else None), (kind, eid, p, "last_kill_time")
            assert got[13] == (ll if e.get("losses") else None), (kind, eid, p, "last_loss_time")
            if e.get("kills"):
                assert abs(got[14] - e["attackers_sum"] / e["kills"]) < 1e-9
            checked += 1
    return checked


def test_corpus_stats_equal_live_and_independent(db):
    kms = corpus()
    assert db.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb(kms),)).fetchone()[0] == len(kms)
    km = r2z2_example()
    assert db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(km),)).fetchone()[0] == km["killmail_id"]
    n = check_all_entities(db)
    assert n > 1000
    assert verify(db) == []
    db.execute("SELECT killboard.rebuild_stats()")
    check_all_entities(db)
    assert verify(db) == []
    # The whole corpus again changes nothing.
    before = db.execute("SELECT entity_key, data FROM killboard.stats ORDER BY 1").fetchall()
    assert db.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb(kms + [km]),)).fetchone()[0] == 0
    after = db.execute("SELECT entity_key, data FROM killboard.stats ORDER BY 1").fetchall()
    assert before == after


def mk(kid, when, system=30000142, victim=(90000001, 98000001, 99000001), attackers=None, zkb=None, ship=587):
    attackers = attackers or [dict(character_id=91000001, corporation_id=98000002, alliance_id=99000002,
                                   damage_done=100, final_blow=True, ship_type_id=587)]
    km = {"killmail_id": kid, "killmail_time": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "solar_system_id": system,
          "victim": {"character_id": victim[0], "corporation_id": victim[1], "alliance_id": victim[2],
                     "ship_type_id": ship, "damage_taken": 100},
          "attackers": attackers}
    if zkb is not None:
        km["zkb"] = zkb
    return km


def stat(conn, eid, kind, period, col="kills"):
    return conn.execute(f"SELECT {col} FROM killboard.entity_stats(%s, %s, %s)", (eid, kind, period)).fetchone()[0]


def test_a_writer_reads_its_own_writes_once(db):
    """Unflushed deltas, deltas flushed earlier in the transaction, and deltas
    flushed earlier in the same statement are each counted exactly once."""
    now = dt.datetime.now(dt.timezone.utc)
    corp = 98150001
    top = "(SELECT count(*) AS n FROM killboard.top_entities('corporation', 'all', 'losses', 5))"
    with db.transaction(force_rollback=True):
        db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(705000, now, victim=(None, corp, None))),))
        assert stat(db, corp, "corporation", "all", "losses") == 1  # pending in memory
        db.execute(f"SELECT * FROM {top} t")  # flushes this transaction's deltas
        assert stat(db, corp, "corporation", "all", "losses") == 1  # a row of ours now
        db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(705001, now, victim=(None, corp, None))),))
        # top_entities flushes, then entity_stats reads in the same statement.
        row = db.execute(f"SELECT t.n, e.losses FROM {top} t,"
                         " LATERAL killboard.entity_stats(%s + 0 * t.n, 'corporation', 'all') e", (corp,)).fetchone()
        assert row[1] == 2
        many = db.execute("SELECT losses FROM killboard.entity_stats_many(ARRAY[%s]::bigint[], 'corporation')",
                          (corp,)).fetchone()[0]
        assert many == 2
    assert stat(db, corp, "corporation", "all", "losses") == 0
    assert db.execute("SELECT count(*) FROM killboard.entity_stats(%s, 'corporation')", (corp,)).fetchone()[0] == 1
    assert verify(db) == []


def test_reads_follow_other_sessions_commits(db, connect):
    """A reader's repeated reads see rows, appended deltas and a new as_of
    committed by other sessions in between, and the advance folds the delta."""
    now = dt.datetime.now(dt.timezone.utc)
    corp = 98160001
    r = connect()
    # Merged in place, so the removal below finds the row held (small
    # transactions append by default: test_small_transactions_append_...).
    db.execute("SET killboard.stats_append_max_entities = 0")
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(706000, now, victim=(None, corp, None))),))
    assert stat(r, corp, "corporation", "all", "losses") == 1
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(706001, now, victim=(None, corp, None))),))
    assert stat(r, corp, "corporation", "all", "losses") == 2
    as_of = r.execute("SELECT as_of FROM killboard.entity_stats(%s, 'corporation')", (corp,)).fetchone()[0]
    holder = connect(autocommit=False)
    holder.execute("SELECT 1 FROM killboard.stats WHERE (entity_key & 576460752303423487) = %s FOR UPDATE", (corp,))
    # The row is held: a removal's flush appends its delta instead of waiting.
    db.execute("DELETE FROM killboard.killmails WHERE killmail_id = 706001")
    deltas = "SELECT count(*) FROM killboard.stats_delta WHERE (entity_key & 576460752303423487) = %s"
    assert db.execute(deltas, (corp,)).fetchone()[0] == 1
    assert stat(r, corp, "corporation", "all", "losses") == 1
    holder.rollback()
    db.execute("SELECT killboard.advance_windows()")
    assert db.execute(deltas, (corp,)).fetchone()[0] == 0
    assert stat(r, corp, "corporation", "all", "losses") == 1
    assert r.execute("SELECT as_of FROM killboard.entity_stats(%s, 'corporation')", (corp,)).fetchone()[0] > as_of
    assert verify(db) == []


def test_small_transactions_append_and_never_wait(db, connect):
    """One killmail's credits go to stats_delta (no stats row to lock or wait
    for); readers add them, advance_windows() folds them, and a transaction
    over killboard.stats_append_max_entities merges into the rows in place."""
    now = dt.datetime.now(dt.timezone.utc)
    corp = 98170001
    deltas = "SELECT count(*) FROM killboard.stats_delta WHERE (entity_key & 576460752303423487) = %s"
    rows = "SELECT count(*) FROM killboard.stats WHERE (entity_key & 576460752303423487) = %s"
    db.execute("SELECT killboard.advance_windows()")
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(707000, now, victim=(None, corp, None))),))
    assert db.execute(deltas, (corp,)).fetchone()[0] == 1
    assert db.execute(rows, (corp,)).fetchone()[0] == 0
    assert stat(db, corp, "corporation", "all", "losses") == 1
    assert stat(db, corp, "corporation", "24h", "losses") == 1
    db.execute("SELECT killboard.advance_windows()")
    assert (db.execute(deltas, (corp,)).fetchone()[0], db.execute(rows, (corp,)).fetchone()[0]) == (0, 1)
    assert stat(db, corp, "corporation", "all", "losses") == 1

    # The row is held by another transaction: a small writer does not wait for it.
    holder = connect(autocommit=False)
    holder.execute("SELECT 1 FROM killboard.stats WHERE (entity_key & 576460752303423487) = %s FOR UPDATE", (corp,))
    w = connect()
    w.execute("SET lock_timeout = '3s'")
    w.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(707001, now, victim=(None, corp, None))),))
    assert db.execute(deltas, (corp,)).fetchone()[0] == 1
    assert stat(w, corp, "corporation", "all", "losses") == 2
    # Over the limit, the same writer merges in place, but never waits for a
    # held row either: that entity's delta is appended too.
    w.execute("SET killboard.stats_append_max_entities = 0")
    w.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(707002, now, victim=(None, corp, None))),))
    assert db.execute(deltas, (corp,)).fetchone()[0] == 2
    assert stat(w, corp, "corporation", "all", "losses") == 3
    # Free, the row takes the merge in place: no further delta.
    holder.rollback()
    w.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(707003, now, victim=(None, corp, None))),))
    assert db.execute(deltas, (corp,)).fetchone()[0] == 2
    assert db.execute(rows, (corp,)).fetchone()[0] == 1
    assert stat(db, corp, "corporation", "all", "losses") == 4
    db.execute("SELECT killboard.advance_windows()")
    assert db.execute(deltas, (corp,)).fetchone()[0] == 0
    assert stat(db, corp, "corporation", "7d", "losses") == 4
    assert verify(db) == []


def test_bulk_writers_racing_on_new_entities_never_wait_or_double_count(db, connect):
    """Two bulk transactions credit the same entities, none stored yet: the
    one that inserts second finds the other's in-flight row, takes its own
    back and appends a delta; neither waits, both commit, nothing counts twice."""
    now = dt.datetime.now(dt.timezone.utc)
    corp = 98170101
    chars = [95170101 + i for i in range(4)]  # killmails 713000.., 713100..
    rows = "SELECT count(*) FROM killboard.stats WHERE (entity_key & 576460752303423487) = %s"
    deltas = "SELECT count(*) FROM killboard.stats_delta WHERE (entity_key & 576460752303423487) = %s"
    batch = lambda base: [mk(base + i, now, victim=(c, corp, None)) for i, c in enumerate(chars)]
    a = connect(autocommit=False)
    b = connect(autocommit=False)
    for c in (a, b):
        c.execute("SET killboard.stats_append_max_entities = 0")
        c.execute("SET lock_timeout = '3s'")
    a.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb(batch(713000)),))
    # The deferred flush, fired now: a's new rows are in flight.
    a.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert a.execute(rows, (corp,)).fetchone()[0] == 1
    b.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb(batch(713100)),))
    b.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert stat(b, corp, "corporation", "all", "losses") == 4
    # b met a's uncommitted rows without waiting: b's credit is a delta.
    assert b.execute(deltas, (corp,)).fetchone()[0] == 1
    assert b.execute(rows, (corp,)).fetchone()[0] == 0
    a.commit()
    b.commit()
    assert db.execute(rows, (corp,)).fetchone()[0] == 1
    assert db.execute(deltas, (corp,)).fetchone()[0] == 1
    assert stat(db, corp, "corporation", "all", "losses") == 8
    for ch in chars:
        assert stat(db, ch, "character", "all", "losses") == 2
    db.execute("SELECT killboard.advance_windows()")
    assert db.execute(deltas, (corp,)).fetchone()[0] == 0
    assert stat(db, corp, "corporation", "24h", "losses") == 8
    assert verify(db) == []


def test_stats_off_marks_the_store_stale_until_a_rebuild(db):
    """Writes with killboard.maintain_stats = off leave the stats behind and say
    so (stats_health), every such transaction after the first one too; a
    rebuild clears the mark and the stats are exact again."""
    now = dt.datetime.now(dt.timezone.utc)
    corp = 98195001

    def maintained():
        return db.execute("SELECT ok, detail FROM killboard.stats_health() WHERE \"check\" = 'maintained'").fetchone()

    db.execute("SELECT killboard.rebuild_stats()")
    assert maintained()[0] is True
    db.execute("SET killboard.maintain_stats = off")
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(709100, now, victim=(None, corp, None))),))
    first = maintained()
    assert first[0] is False and "maintain_stats = off" in first[1], first
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(709101, now, victim=(None, corp, None))),))
    assert maintained() == first  # marked once, at the first stale write
    assert stat(db, corp, "corporation", "all", "losses") == 0
    db.execute("RESET killboard.maintain_stats")
    db.execute("SELECT killboard.rebuild_stats()")
    assert maintained()[0] is True
    assert stat(db, corp, "corporation", "all", "losses") == 2
    assert verify(db) == []


def test_appends_keep_an_index_added_to_stats_delta(db):
    """The append writes heap and index directly; an index someone adds to
    stats_delta later must still get every row (the SQL path takes over)."""
    now = dt.datetime.now(dt.timezone.utc)
    corp = 98190001
    db.execute("CREATE INDEX stats_delta_test_kind_idx ON killboard.stats_delta ((entity_key >> 59))")
    try:
        db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(709000, now, victim=(None, corp, None))),))
        db.execute("SET enable_seqscan = off")
        db.execute("SET enable_bitmapscan = off")
        by_kind = "SELECT entity_key FROM killboard.stats_delta WHERE entity_key >> 59 = 2"
        plan = "\n".join(r[0] for r in db.execute("EXPLAIN " + by_kind))
        assert "stats_delta_test_kind_idx" in plan, plan
        assert stats_key("corporation", corp) in [r[0] for r in db.execute(by_kind)]
    finally:
        db.execute("RESET enable_seqscan")
        db.execute("RESET enable_bitmapscan")
        db.execute("DROP INDEX killboard.stats_delta_test_kind_idx")
    assert stat(db, corp, "corporation", "all", "losses") == 1


def test_removing_the_latest_loss_from_appended_or_held_rows(db, connect):
    """The last loss time goes back to the previous loss when the latest one is
    deleted while the entity lives only in stats_delta, and while another
    transaction holds its row; before and after the fold."""
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    corp = 98180001
    t1, t2, t3 = (now - dt.timedelta(hours=h) for h in (3, 2, 1))

    def last():
        return db.execute("SELECT losses, last_loss_time FROM killboard.entity_stats(%s, 'corporation', 'all')",
                          (corp,)).fetchone()

    db.execute("SELECT killboard.advance_windows()")
    for kid, t in ((708000, t1), (708001, t2)):
        db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(kid, t, victim=(None, corp, None))),))
    assert last() == (2, t2)
    db.execute("DELETE FROM killboard.killmails WHERE killmail_id = 708001")
    assert last() == (1, t1)
    assert verify(db) == []
    db.execute("SELECT killboard.advance_windows()")
    assert last() == (1, t1)

    holder = connect(autocommit=False)
    holder.execute("SELECT 1 FROM killboard.stats WHERE (entity_key & 576460752303423487) = %s FOR UPDATE", (corp,))
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(708002, t3, victim=(None, corp, None))),))
    assert last() == (2, t3)
    db.execute("DELETE FROM killboard.killmails WHERE killmail_id = 708002")
    assert last() == (1, t1)
    assert verify(db) == []
    holder.rollback()
    # A removal that locks the row folds the row's appended deltas into it.
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(708003, t3, victim=(None, corp, None))),))
    db.execute("DELETE FROM killboard.killmails WHERE killmail_id = 708003")
    assert last() == (1, t1)
    assert db.execute("SELECT count(*) FROM killboard.stats_delta WHERE (entity_key & 576460752303423487) = %s", (corp,)).fetchone()[0] == 0
    db.execute("SELECT killboard.advance_windows()")
    assert last() == (1, t1)
    assert verify(db) == []


def test_window_boundaries_and_late_killmails(db):
    db.execute("SELECT killboard.advance_windows()")
    now = db.execute("SELECT as_of FROM killboard.stats_state").fetchone()[0]
    # One killmail 5 s inside each window boundary, each for its own victim corporation.
    for i, days in enumerate([1, 14, 30, 90]):
        km = mk(700000 + i, now - dt.timedelta(days=days) + dt.timedelta(seconds=5), victim=(None, 98100000 + i, None))
        db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(km),))
    for i, (days, period) in enumerate([(1, "24h"), (14, "14d"), (30, "30d"), (90, "90d")]):
        assert stat(db, 98100000 + i, "corporation", period, "losses") == 1, period
    time.sleep(6)
    db.execute("SELECT killboard.advance_windows()")
    for i, (days, period) in enumerate([(1, "24h"), (14, "14d"), (30, "30d"), (90, "90d")]):
        assert stat(db, 98100000 + i, "corporation", period, "losses") == 0, period
        assert stat(db, 98100000 + i, "corporation", "all", "losses") == 1
    assert stat(db, 98100000, "corporation", "7d", "losses") == 1
    # A late killmail (40 days old) touches only the windows containing it.
    km = mk(700010, now - dt.timedelta(days=40), victim=(None, 98100010, None))
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(km),))
    got = {p: stat(db, 98100010, "corporation", p, "losses") for p in PERIODS}
    assert got == {"all": 1, "90d": 1, "30d": 0, "14d": 0, "7d": 0, "24h": 0}
    assert verify(db) == []


def test_advance_folds_inserts_and_deletes_rows(db, connect):
    """The advance's rewrite: a delta for an entity without a stored row becomes
    its row, a delta that empties a row deletes it, and an entity that ages out
    of a window and has a delta is rewritten once with both."""
    # Merged in place, so there are stored rows to move and to hold.
    db.execute("SET killboard.stats_append_max_entities = 0")
    db.execute("SELECT killboard.advance_windows()")
    now = db.execute("SELECT as_of FROM killboard.stats_state").fetchone()[0]
    moved, emptied, both, gone = 98210001, 98210002, 98210003, 98210004
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(712000, now, victim=(None, moved, None))),))
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(712001, now, victim=(None, emptied, None))),))
    # One loss leaves the 24h window 5 s from now, one (to be deleted) is two
    # days old, the latest stays in every window.
    edge = now - dt.timedelta(days=1) + dt.timedelta(seconds=5)
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(712002, edge, victim=(None, both, None))),))
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(712003, now - dt.timedelta(days=2), victim=(None, both, None))),))
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(712004, now, victim=(None, both, None))),))
    # A stored row turned into an appended delta (what a write-behind writer
    # leaves for a new entity): readers add both, so nothing changes for them.
    db.execute("INSERT INTO killboard.stats_delta (entity_key, data)"
               " SELECT entity_key, data FROM killboard.stats WHERE (entity_key & 576460752303423487) = %s", (moved,))
    db.execute("DELETE FROM killboard.stats WHERE (entity_key & 576460752303423487) = %s", (moved,))
    assert stat(db, moved, "corporation", "all", "losses") == 1
    # The same for an entity whose killmail then goes away: with no stored row
    # to lock, the removal is appended too, and the deltas add up to nothing.
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(712005, now, victim=(None, gone, None))),))
    db.execute("INSERT INTO killboard.stats_delta (entity_key, data)"
               " SELECT entity_key, data FROM killboard.stats WHERE (entity_key & 576460752303423487) = %s", (gone,))
    db.execute("DELETE FROM killboard.stats WHERE (entity_key & 576460752303423487) = %s", (gone,))
    db.execute("DELETE FROM killboard.killmails WHERE killmail_id = 712005")
    assert db.execute("SELECT count(*) FROM killboard.stats_delta WHERE (entity_key & 576460752303423487) = %s", (gone,)).fetchone()[0] == 2
    assert stat(db, gone, "corporation", "all", "losses") == 0
    # Removals whose rows are held by another session become appended deltas.
    holder = connect(autocommit=False)
    holder.execute("SELECT 1 FROM killboard.stats WHERE (entity_key & 576460752303423487) IN (%s, %s) FOR UPDATE", (emptied, both))
    db.execute("DELETE FROM killboard.killmails WHERE killmail_id IN (712001, 712003)")
    holder.rollback()
    deltas = "SELECT count(*) FROM killboard.stats_delta WHERE (entity_key & 576460752303423487) IN (%s, %s, %s)"
    assert db.execute(deltas, (moved, emptied, both)).fetchone()[0] == 3
    time.sleep(6)
    db.execute("SELECT killboard.advance_windows()")
    assert db.execute(deltas, (moved, emptied, both)).fetchone()[0] == 0
    assert db.execute(deltas, (gone, gone, gone)).fetchone()[0] == 0
    rows = dict(db.execute("SELECT entity_key & 576460752303423487, count(*) FROM killboard.stats WHERE (entity_key & 576460752303423487) IN (%s, %s, %s, %s)"
                           " GROUP BY 1", (moved, emptied, both, gone)).fetchall())
    assert rows == {moved: 1, both: 1}
    assert stat(db, moved, "corporation", "24h", "losses") == 1
    assert stat(db, emptied, "corporation", "all", "losses") == 0
    got = {p: stat(db, both, "corporation", p, "losses") for p in PERIODS}
    assert got == {"all": 2, "90d": 2, "30d": 2, "14d": 2, "7d": 2, "24h": 1}
    assert verify(db) == []


def test_writer_waiting_on_an_advance_credits_its_new_windows(db, connect):
    """A writer that waits for the window lock while an advance holds it
    credits against the as_of that advance committed, even in REPEATABLE READ
    with a snapshot taken before it: a killmail that has just left the 24h
    window by the new as_of is not counted in it."""
    db.execute("SELECT killboard.advance_windows()")
    t0 = db.execute("SELECT as_of FROM killboard.stats_state").fetchone()[0]
    corp = 98210021
    km = mk(712020, t0 - dt.timedelta(days=1) + dt.timedelta(seconds=3), victim=(None, corp, None))
    time.sleep(4)
    adv = connect(autocommit=False)
    adv.execute("SELECT killboard.advance_windows()")  # holds the window lock until commit
    writer = connect(autocommit=False)
    writer.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    writer.execute("SELECT count(*) FROM killboard.stats_state")  # the snapshot predates the advance
    pid = writer.info.backend_pid
    failed = []

    def ingest():
        try:
            writer.execute("SELECT killboard.ingest(%s::jsonb)", (jb(km),))
            writer.commit()
        except Exception as e:  # noqa: BLE001 - reported below
            failed.append(e)

    t = threading.Thread(target=ingest)
    t.start()
    waiting = "SELECT count(*) FROM pg_catalog.pg_locks WHERE pid = %s AND locktype = 'advisory' AND NOT granted"
    for _ in range(200):
        if db.execute(waiting, (pid,)).fetchone()[0] == 1:
            break
        time.sleep(0.05)
    assert db.execute(waiting, (pid,)).fetchone()[0] == 1, "the writer did not wait for the advance"
    adv.commit()
    t.join(30)
    assert not t.is_alive() and failed == []
    assert stat(db, corp, "corporation", "all", "losses") == 1
    assert stat(db, corp, "corporation", "24h", "losses") == 0
    assert stat(db, corp, "corporation", "7d", "losses") == 1
    assert verify(db) == []


def test_advance_on_a_stale_snapshot_is_a_serialization_failure(db, connect):
    """An advance in a REPEATABLE READ transaction whose snapshot predates
    another advance's fold must not fold the same delta again: 40001, like
    the SQL it replaced, and the stats stay exact."""
    now = dt.datetime.now(dt.timezone.utc)
    corp = 98210011
    db.execute("SET killboard.stats_append_max_entities = 0")  # a stored row to hold
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(712010, now - dt.timedelta(days=2), victim=(None, corp, None))),))
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(712011, now, victim=(None, corp, None))),))
    holder = connect(autocommit=False)
    holder.execute("SELECT 1 FROM killboard.stats WHERE (entity_key & 576460752303423487) = %s FOR UPDATE", (corp,))
    db.execute("DELETE FROM killboard.killmails WHERE killmail_id = 712010")
    holder.rollback()
    deltas = "SELECT count(*) FROM killboard.stats_delta WHERE (entity_key & 576460752303423487) = %s"
    assert db.execute(deltas, (corp,)).fetchone()[0] == 1
    stale = connect(autocommit=False)
    stale.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    assert stale.execute(deltas, (corp,)).fetchone()[0] == 1
    db.execute("SELECT killboard.advance_windows()")
    with pytest.raises(psycopg.errors.SerializationFailure):
        stale.execute("SELECT killboard.advance_windows()")
    stale.rollback()
    assert db.execute(deltas, (corp,)).fetchone()[0] == 0
    assert stat(db, corp, "corporation", "all", "losses") == 1
    assert verify(db) == []


def test_credit_modes(db):
    now = dt.datetime.now(dt.timezone.utc)
    atts = [dict(character_id=92000001, corporation_id=98200001, damage_done=10, final_blow=False, ship_type_id=587),
            dict(character_id=92000002, corporation_id=98200001, damage_done=20, final_blow=True, ship_type_id=588),
            dict(character_id=92000003, corporation_id=98200002, damage_done=30, final_blow=False, ship_type_id=587)]
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(710000, now, attackers=atts)),))
    assert stat(db, 98200001, "corporation", "all") == 1
    assert stat(db, 98200001, "corporation", "all", "damage_dealt") == 30
    assert stat(db, 98200001, "corporation", "all", "final_blows") == 1
    assert stat(db, 92000003, "character", "all") == 1
    try:
        db.execute("SET killboard.kill_credit = 'final_blow'")
        db.execute("SELECT killboard.rebuild_stats()")
        assert stat(db, 92000002, "character", "all") == 1
        assert stat(db, 92000001, "character", "all") == 0
        assert stat(db, 98200002, "corporation", "all") == 0
        assert stat(db, 588, "ship_type", "all") == 1
        assert verify(db) == []
        check_all_entities(db, "final_blow")
    finally:
        db.execute("RESET killboard.kill_credit")
        db.execute("SELECT killboard.rebuild_stats()")


def test_redelivery_delete_and_rollback(db, connect):
    now = dt.datetime.now(dt.timezone.utc)
    km = mk(720000, now, victim=(93000001, 98300001, None), zkb={"totalValue": 1000.5, "points": 3})
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(km),))
    assert stat(db, 98300001, "corporation", "all", "isk_lost") == Decimal("1000.50")
    assert db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(km),)).fetchone()[0] == 720000
    assert stat(db, 98300001, "corporation", "all", "losses") == 1
    km2 = copy.deepcopy(km)
    km2["zkb"]["totalValue"] = 2500.25
    assert db.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb([km2]),)).fetchone()[0] == 1
    assert stat(db, 98300001, "corporation", "all", "isk_lost") == Decimal("2500.25")
    assert stat(db, 98000002, "corporation", "30d", "isk_destroyed") >= Decimal("2500.25")
    db.execute("DELETE FROM killboard.killmails WHERE killmail_id = 720000")
    assert stat(db, 98300001, "corporation", "all", "losses") == 0
    assert stat(db, 93000001, "character", "all", "last_loss_time") is None
    # A rolled-back ingest leaves no trace; so does a rolled-back savepoint.
    c = connect(autocommit=False)
    c.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(720001, now, victim=(None, 98300002, None))),))
    c.rollback()
    c.execute("SAVEPOINT a")
    c.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(720002, now, victim=(None, 98300003, None))),))
    c.execute("ROLLBACK TO SAVEPOINT a")
    c.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(720003, now, victim=(None, 98300004, None))),))
    c.commit()
    assert stat(db, 98300002, "corporation", "all", "losses") == 0
    assert stat(db, 98300003, "corporation", "all", "losses") == 0
    assert stat(db, 98300004, "corporation", "all", "losses") == 1
    assert verify(db) == []


def test_plain_sql_writes_keep_stats_exact(db, connect):
    c = connect(autocommit=False)
    c.execute("""INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_corporation_id,
                 victim_ship_type_id, total_value) VALUES (730000, now(), 30000142, 98400001, 587, 10),
                 (730001, now() - interval '20 days', 30000144, 98400001, 588, 20)""")
    c.execute("""INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id, final_blow, damage_done)
                 VALUES (730000, 0, 94000001, 98400002, true, 5), (730000, 1, 94000002, 98400002, false, 7),
                        (730001, 0, 94000001, 98400003, true, 1)""")
    c.commit()
    assert stat(db, 98400002, "corporation", "all") == 1
    assert stat(db, 98400002, "corporation", "all", "damage_dealt") == 12
    assert stat(db, 94000001, "character", "all") == 2
    assert stat(db, 94000001, "character", "14d") == 1
    assert verify(db) == []
    db.execute("UPDATE killboard.attackers SET corporation_id = 98400009 WHERE killmail_id = 730000 AND attacker_index = 1")
    assert stat(db, 98400009, "corporation", "all") == 1
    db.execute("UPDATE killboard.killmails SET killmail_time = now() - interval '100 days' WHERE killmail_id = 730000")
    assert stat(db, 98400009, "corporation", "90d") == 0
    db.execute("DELETE FROM killboard.attackers WHERE killmail_id = 730001")
    assert stat(db, 98400003, "corporation", "all") == 0
    with db.cursor() as cur:
        with cur.copy("COPY killboard.attackers (killmail_id, attacker_index, character_id, corporation_id, final_blow) FROM STDIN") as cp:
            cp.write_row((730001, 0, 94000005, 98400005, True))
            cp.write_row((730001, 1, 94000006, 98400005, False))
    assert stat(db, 98400005, "corporation", "all") == 1
    assert verify(db) == []
    # A statement failing half-way (row 3 of 3 breaks a constraint) leaves nothing behind.
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("""INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id)
                      VALUES (730001, 5, 94000007, 98400007), (730001, 6, 94000008, 98400007), (730001, 7, -1, 98400007)""")
    assert stat(db, 98400007, "corporation", "all") == 0
    assert verify(db) == []


def test_two_writers_opposite_order_no_deadlock(db, connect):
    now = dt.datetime.now(dt.timezone.utc)
    a = (95000001, 98500001, 99500001)
    b = (95000002, 98500002, 99500002)
    att = lambda p: [dict(character_id=p[0], corporation_id=p[1], alliance_id=p[2], damage_done=1, final_blow=True, ship_type_id=587)]
    errors = []

    def writer(w, first, second, base):
        conn = connect(autocommit=False)
        try:
            for i in range(60):
                conn.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(base + 2 * i, now, victim=first, attackers=att(second))),))
                conn.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(base + 2 * i + 1, now, victim=second, attackers=att(first))),))
                conn.commit()
        except Exception as e:  # noqa: BLE001 - any failure fails the test below
            errors.append(repr(e))

    t1 = threading.Thread(target=writer, args=(1, a, b, 800000))
    t2 = threading.Thread(target=writer, args=(2, b, a, 900000))
    t1.start(); t2.start(); t1.join(60); t2.join(60)
    assert errors == []
    assert stat(db, 99500001, "alliance", "all") == 120
    assert stat(db, 99500001, "alliance", "all", "losses") == 120
    db.execute("SELECT killboard.advance_windows()")
    assert db.execute("SELECT count(*) FROM killboard.stats_delta").fetchone()[0] == 0
    assert stat(db, 99500002, "alliance", "all") == 120
    assert verify(db) == []


def test_ids_no_stats_key_can_hold_are_an_error_naming_the_field(db):
    """Stats rows are keyed by kind << 59 | id: a larger id cannot be kept, so
    it fails its statement (22003, the field named) and nothing is stored;
    written with stats off, the rebuild refuses it the same way."""
    now = dt.datetime.now(dt.timezone.utc)
    big = 1 << 59
    doc = mk(745000, now, victim=(None, 98650001, None), attackers=[
        {"character_id": 91650001, "corporation_id": 98650002, "alliance_id": big, "damage_done": 5,
         "final_blow": True, "ship_type_id": 587}])
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match=r"attackers\[0\]\.alliance_id"):
        db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(doc),))
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match="victim.corporation_id"):
        db.execute("INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_corporation_id,"
                   " victim_ship_type_id) VALUES (745001, now(), 30000142, %s, 587)", (big + 7,))
    assert db.execute("SELECT count(*) FROM killboard.killmails WHERE killmail_id IN (745000, 745001)").fetchone()[0] == 0
    # The largest id a key holds is kept and read back.
    doc["attackers"][0]["alliance_id"] = big - 1
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(doc),))
    assert stat(db, big - 1, "alliance", "all") == 1
    assert stat(db, big, "alliance", "all") == 0
    with db.transaction():
        db.execute("SET LOCAL killboard.maintain_stats = off")
        db.execute("UPDATE killboard.attackers SET alliance_id = %s WHERE killmail_id = 745000", (big,))
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match="alliance"):
        db.execute("SELECT killboard.rebuild_stats()")
    with db.transaction():
        db.execute("SET LOCAL killboard.maintain_stats = off")
        db.execute("DELETE FROM killboard.killmails WHERE killmail_id = 745000")
    db.execute("SELECT killboard.rebuild_stats()")
    assert verify(db) == []


def test_verify_and_health_catch_corruption(db):
    now = dt.datetime.now(dt.timezone.utc)
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(740000, now, victim=(None, 98600001, None))),))
    db.execute("SELECT killboard.ingest(%s::jsonb)", (jb(mk(740001, now, victim=(None, 98600002, None))),))
    assert verify(db) == []
    db.execute("SELECT killboard.advance_windows()")  # fold the appended deltas into the rows
    db.execute("""UPDATE killboard.stats SET data = (SELECT data FROM killboard.stats WHERE entity_key = %s)
                  WHERE entity_key = %s""", (stats_key("character", 91000001), stats_key("corporation", 98600001)))
    bad = verify(db)
    assert any(r[0] == 98600001 and r[1] == "corporation" for r in bad), bad
    assert db.execute("SELECT count(*) FROM killboard.verify_stats(1000000)").fetchone()[0] > 0
    # 14d kills (2) above 30d kills (1): a hand-made record.
    db.execute("UPDATE killboard.stats SET data = '\\x010c01020104'::bytea WHERE entity_key = %s",
               (stats_key("corporation", 98600002),))
    health = {r[0]: r[1] for r in db.execute("SELECT * FROM killboard.stats_health()")}
    assert health["windows_nested"] is False
    db.execute("SELECT killboard.rebuild_stats()")
    assert verify(db) == []
    health = {r[0]: r[1] for r in db.execute("SELECT * FROM killboard.stats_health()")}
    assert health["windows_nested"] is True


BAD = [
    ("not json", None, "22P02"),
    ('{"killmail_time": "2026-01-01T00:00:00Z"}', "$.killmail_id", "23502"),
    ('{"killmail_id": 1, "solar_system_id": 1, "victim": {"ship_type_id": 1}, "attackers": [{}]}', "$.killmail_time", "23502"),
    ('{"killmail_id": 1, "killmail_time": "2026-01-01T00:00:00Z", "solar_system_id": 1, "attackers": [{}]}', "$.victim", "23502"),
    ('{"killmail_id": -4, "killmail_time": "2026-01-01T00:00:00Z"}', "$.killmail_id", "22023"),
    ('{"killmail_id": "7", "killmail_time": "2026-01-01T00:00:00Z"}', "$.killmail_id", "22023"),
    ('{"killmail_id": 1, "killmail_time": "soon", "solar_system_id": 1}', "$.killmail_time", "22023"),
    ('{"killmail_id": 1, "killmail_time": "2026-01-01T00:00:00Z", "solar_system_id": 1, "victim": {"ship_type_id": 1}, "attackers": []}', "$.attackers", "22023"),
    ('{"killmail_id": 1, "killmail_time": "2026-01-01T00:00:00Z", "solar_system_id": 1, "victim": {"ship_type_id": 1}, "attackers": [{"character_id": 1.5}]}', "$.attackers[0].character_id", "22023"),
    ('{"killmail_id": 1, "killmail_time": "2026-01-01T00:00:00Z", "solar_system_id": 1, "victim": {"ship_type_id": 1}, "attackers": [{}], "zkb": {"totalValue": 1e300}}', "$.zkb.totalValue", "22003"),
    ('{"package": null}', "$.package", "22023"),
]


@pytest.mark.parametrize("payload,path,state", BAD)
def test_bad_input_is_rejected_with_sqlstate(db, payload, path, state):
    before = db.execute("SELECT count(*) FROM killboard.stats").fetchone()[0]
    with pytest.raises(psycopg.Error) as e:
        db.execute("SELECT killboard.ingest(%s::jsonb)", (payload,))
    assert e.value.sqlstate == state, e.value
    if path:
        assert path in str(e.value), e.value
    assert db.execute("SELECT count(*) FROM killboard.stats").fetchone()[0] == before


def test_bad_arguments_and_partial_batches(db):
    for sql, state in [("SELECT * FROM killboard.entity_stats(1, 'pilot', 'all')", "22023"),
                       ("SELECT * FROM killboard.entity_stats(1, 'character', '1y')", "22023"),
                       ("SELECT * FROM killboard.top_entities('character', 'all', 'bogus', 5)", "22023"),
                       ("SELECT killboard.ingest_many('{}'::jsonb)", "22023")]:
        with pytest.raises(psycopg.Error) as e:
            db.execute(sql)
        assert e.value.sqlstate == state, sql
    now = dt.datetime.now(dt.timezone.utc)
    good = mk(750000, now, victim=(None, 98700001, None))
    with pytest.raises(psycopg.Error) as e:
        db.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb([good, {"killmail_id": 3}]),))
    assert "$[1]" in str(e.value)
    assert stat(db, 98700001, "corporation", "all", "losses") == 0
    assert db.execute("SELECT count(*) FROM killboard.killmails WHERE killmail_id = 750000").fetchone()[0] == 0
    row = db.execute("SELECT kills, losses, isk_destroyed, last_kill_time FROM killboard.entity_stats(123456789, 'character')").fetchone()
    assert row == (0, 0, Decimal("0.00"), None)
