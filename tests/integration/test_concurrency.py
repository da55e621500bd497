"""Issue 7.1: eight writers on the same hot entities, beside a maintenance
connection running advance_windows(), rebuild_stats() and verify_stats().

Writers mix single-row ingests, ingest_many batches, duplicates of the same
killmail from several writers at once, re-deliveries with new zKillboard
values, and COPY bulk loads of killmails + attackers. No error of any kind
may reach a caller, and the stats must equal a recomputation at the end and,
seen from one snapshot, at every point in between.
"""
import datetime as dt
import threading
import time

import psycopg

from conftest import verify
from robust import HOT_ALLIANCES, HOT_CHARS, HOT_CORPS, copy_load, jb, rng_for, scaled, synth_killmail

WRITERS = 8


def test_writers_and_maintenance_never_fail(connect):
    per_writer = scaled(120, 1500)
    now = dt.datetime.now(dt.timezone.utc)
    rng = rng_for("concurrency")
    # A shared pool of killmails: each is delivered by one to three writers,
    # some a second time with a re-priced zkb.
    pool = [synth_killmail(rng, 60_000_000 + i, now, 95_000_000) for i in range(per_writer * WRITERS // 2)]
    plans = [[] for _ in range(WRITERS)]
    for km in pool:
        for w in rng.sample(range(WRITERS), rng.choice([1, 1, 2, 3])):
            plans[w].append(km)
        if "zkb" in km and rng.random() < 0.2:
            again = dict(km, zkb=dict(km["zkb"], totalValue=round(rng.uniform(1e5, 5e9), 2), points=rng.randrange(1, 20)))
            plans[rng.randrange(WRITERS)].append(again)
    for p in plans:
        rng.shuffle(p)
    # COPY loads use their own ids (a COPY of an existing id is the caller's
    # primary-key error, not ours) but the same hot entities.
    copies = [[synth_killmail(rng, 70_000_000 + w * 100_000 + i, now, 96_000_000) for i in range(scaled(30, 600))]
              for w in range(2)]

    errors, done = [], threading.Event()
    counts = {"ingest": 0, "ingest_many": 0, "copy_rows": 0, "advance": 0, "rebuild": 0, "verify": 0}
    lock = threading.Lock()

    def writer(w):
        conn = connect()
        # Half the writers merge every flush in place (the bulk path: rows
        # locked without waiting, held ones appended), half append.
        if w % 2 == 0:
            conn.execute("SET killboard.stats_append_max_entities = 0")
        r = rng_for(f"writer{w}")
        plan = plans[w]
        i = 0
        try:
            while i < len(plan):
                if w < 2 and copies[w] and r.random() < 0.1:
                    chunk, copies[w][:] = copies[w][:10], copies[w][10:]
                    copy_load(conn, chunk)
                    with lock:
                        counts["copy_rows"] += len(chunk)
                    continue
                if r.random() < 0.3:
                    batch = plan[i:i + r.randrange(2, 12)]
                    conn.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb(batch),))
                    i += len(batch)
                    with lock:
                        counts["ingest_many"] += 1
                else:
                    conn.execute("SELECT killboard.ingest(%s::jsonb)", (jb(plan[i]),))
                    i += 1
                    with lock:
                        counts["ingest"] += 1
            while w < 2 and copies[w]:
                chunk, copies[w][:] = copies[w][:10], copies[w][10:]
                copy_load(conn, chunk)
                with lock:
                    counts["copy_rows"] += len(chunk)
        except Exception as e:  # noqa: BLE001 - every failure is reported by the test
            errors.append(f"writer {w}: {type(e).__name__} {getattr(e, 'sqlstate', '')}: {e}")

    def maintenance():
        conn = connect()
        snap = connect(autocommit=False)
        snap.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        k = 0
        try:
            while not done.is_set():
                conn.execute("SELECT killboard.advance_windows()")
                counts["advance"] += 1
                if k % 4 == 3:
                    conn.execute("SELECT killboard.rebuild_stats()")
                    counts["rebuild"] += 1
                # One snapshot sees whole transactions: stats and killmails must agree in it.
                bad = snap.execute("SELECT * FROM killboard.verify_stats(30)").fetchall()
                snap.rollback()
                counts["verify"] += 1
                if bad:
                    errors.append(f"verify_stats(30) in one snapshot, round {k}: {bad[:5]}")
                k += 1
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001
            errors.append(f"maintenance: {type(e).__name__} {getattr(e, 'sqlstate', '')}: {e}")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    m = threading.Thread(target=maintenance)
    m.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(scaled(240, 3000))
    done.set()
    m.join(120)
    assert not any(t.is_alive() for t in threads + [m]), "a connection hung (deadlock or lost wakeup)"
    assert errors == [], "\n".join(errors)
    print(f"\nconcurrency: {WRITERS} writers, {len(pool)} distinct killmails by ingest "
          f"({sum(len(p) for p in plans)} deliveries), {counts}")

    db = connect()
    n_ingested = {k["killmail_id"] for k in pool}
    stored = {r[0] for r in db.execute("SELECT killmail_id FROM killboard.killmails WHERE killmail_id < 70000000")}
    assert stored == n_ingested
    assert db.execute("SELECT count(*) FROM killboard.killmails WHERE killmail_id >= 70000000").fetchone()[0] \
        == counts["copy_rows"] == 2 * scaled(30, 600)
    assert db.execute("SELECT count(*) FROM killboard.attackers a LEFT JOIN killboard.killmails k USING (killmail_id)"
                      " WHERE k.killmail_id IS NULL").fetchone()[0] == 0
    # Every killmail's attackers stored once, in full.
    wrong = db.execute("SELECT k.killmail_id FROM killboard.killmails k JOIN killboard.attackers a USING (killmail_id)"
                       " WHERE k.killmail_id < 70000000 GROUP BY 1, k.attacker_count HAVING count(*) <> k.attacker_count").fetchall()
    assert wrong == []
    assert verify(db) == []
    hot = [(a, "alliance") for a in HOT_ALLIANCES] + [(c, "corporation") for c in HOT_CORPS] + [(c, "character") for c in HOT_CHARS]
    for eid, kind in hot:
        for period in ("all", "30d", "7d", "24h"):
            q = "SELECT * FROM killboard.{}(%s, %s, %s)"
            got = db.execute(q.format("entity_stats"), (eid, kind, period)).fetchone()
            live = db.execute(q.format("entity_stats_live"), (eid, kind, period)).fetchone()
            assert got == live, (eid, kind, period)
    db.execute("SELECT killboard.advance_windows()")
    assert db.execute("SELECT count(*) FROM killboard.stats_delta").fetchone()[0] == 0
    assert verify(db) == []


def test_duplicate_delivery_race(connect):
    """The same new killmails delivered by every writer at the same instant: stored and credited once."""
    now = dt.datetime.now(dt.timezone.utc)
    rounds = scaled(15, 200)
    errors = []
    barrier = threading.Barrier(WRITERS)

    def writer(w):
        conn = connect()
        try:
            for r in range(rounds):
                kms = [synth_killmail(rng_for(f"dup{r}:{i}"), 61_000_000 + r * 10 + i, now, 97_000_000) for i in range(3)]
                barrier.wait(30)
                if w % 2:
                    conn.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb(kms[::-1]),))
                else:
                    for km in kms:
                        conn.execute("SELECT killboard.ingest(%s::jsonb)", (jb(km),))
        except Exception as e:  # noqa: BLE001
            errors.append(f"writer {w}: {type(e).__name__} {getattr(e, 'sqlstate', '')}: {e}")
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == [], errors[:5]
    db = connect()
    assert db.execute("SELECT count(*) FROM killboard.killmails WHERE killmail_id BETWEEN 61000000 AND 61999999").fetchone()[0] == rounds * 3
    assert verify(db) == []
