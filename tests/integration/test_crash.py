"""Issue 7.2: crash safety. kill -9 the postmaster of this module's own
cluster in the middle of bulk ingest, of COPY loads and of rebuild_stats();
after crash recovery the stats equal a recomputation, and every acknowledged
batch is there whole. A statement failing half-way leaves nothing behind.
"""
import datetime as dt
import threading
import time

import psycopg
import pytest

from robust import BASE_PORT, Cluster, copy_load, HOT_ALLIANCES, HOT_CORPS, crash_lines, free_port, jb, rng_for, scaled, synth_killmail

CRASHES = {"count": 0}


@pytest.fixture(scope="module")
def cluster():
    c = Cluster("crash", free_port(BASE_PORT + 1)).init()
    c.start()
    c.create_db()
    yield c
    bad = crash_lines(c.log())
    c.remove()
    assert bad == [], bad
    print(f"\ncrash: {CRASHES['count']} kill -9 of the postmaster survived")


def exact(conn):
    """Stats equal a recomputation from the killmails, and the hot entities read the same live."""
    assert conn.execute("SELECT * FROM killboard.verify_stats()").fetchall() == []
    for eid, kind in [(a, "alliance") for a in HOT_ALLIANCES] + [(c, "corporation") for c in HOT_CORPS]:
        q = "SELECT * FROM killboard.{}(%s, %s, 'all')"
        assert conn.execute(q.format("entity_stats"), (eid, kind)).fetchone() == \
            conn.execute(q.format("entity_stats_live"), (eid, kind)).fetchone()


def crash_and_recover(cluster):
    cluster.kill9()
    CRASHES["count"] += 1
    cluster.start()
    # Recovery done and the database usable again.
    with cluster.connect(autocommit=True) as c:
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False


def ingest_until_killed(cluster, base, batches, batch_size, acked, mode):
    now = dt.datetime.now(dt.timezone.utc)
    rng = rng_for(f"crash-ingest-{base}")
    try:
        with cluster.connect(autocommit=True) as conn:
            for b in range(batches):
                kms = [synth_killmail(rng, base + b * batch_size + i, now, 94_000_000) for i in range(batch_size)]
                if mode == "copy":
                    copy_load(conn, kms)
                else:
                    conn.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb(kms),))
                acked.append(b)
    except psycopg.OperationalError:
        pass  # the server went away: expected


@pytest.mark.parametrize("mode", ["ingest_many", "copy"])
def test_kill9_during_bulk_load(cluster, mode):
    rounds = scaled(2, 8)
    batch = 100
    for r in range(rounds):
        base = (100_000_000 if mode == "ingest_many" else 200_000_000) + r * 1_000_000
        acked = []
        t = threading.Thread(target=ingest_until_killed, args=(cluster, base, 1000, batch, acked, mode))
        t.start()
        # Let a few batches commit, then kill in the middle of the next one.
        deadline = time.time() + 60
        while len(acked) < 2 + r % 3 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng_for(f"delay{mode}{r}").uniform(0.0, 0.15))
        crash_and_recover(cluster)
        t.join(60)
        assert not t.is_alive()
        with cluster.connect(autocommit=True) as conn:
            ids = {row[0] for row in conn.execute(
                "SELECT killmail_id FROM killboard.killmails WHERE killmail_id BETWEEN %s AND %s", (base, base + 999_999))}
            stored = {(i - base) // batch for i in ids}
            # Acknowledged batches survived whole; the batch in flight is all or nothing.
            assert set(acked) <= stored, (acked, sorted(stored))
            assert stored <= set(acked) | {len(acked)}
            assert len(ids) == len(stored) * batch
            exact(conn)


def test_kill9_during_rebuild(cluster):
    with cluster.connect(autocommit=True) as conn:
        n = conn.execute("SELECT count(*) FROM killboard.killmails").fetchone()[0]
        if n < 2000:
            now = dt.datetime.now(dt.timezone.utc)
            rng = rng_for("crash-rebuild")
            conn.execute("SELECT killboard.ingest_many(%s::jsonb)",
                         (jb([synth_killmail(rng, 89_000_000 + i, now, 94_000_000) for i in range(3000)]),))
        t0 = time.time()
        conn.execute("SELECT killboard.rebuild_stats()")
        took = time.time() - t0
        before = conn.execute("SELECT entity_key FROM killboard.stats ORDER BY 1").fetchall()
    interrupted = []
    for r in range(scaled(3, 10)):
        def rebuild():
            try:
                with cluster.connect(autocommit=True) as c:
                    c.execute("SELECT killboard.rebuild_stats()")
            except psycopg.OperationalError:
                interrupted.append(r)
        t = threading.Thread(target=rebuild)
        t.start()
        time.sleep(took * (0.2 + 0.6 * rng_for(f"rebuild{r}").random()))
        crash_and_recover(cluster)
        t.join(60)
        with cluster.connect(autocommit=True) as conn:
            exact(conn)
            # A rebuild killed half-way left the old rows, not half of new ones.
            assert conn.execute("SELECT entity_key FROM killboard.stats ORDER BY 1").fetchall() == before
    # The kills landed while a rebuild was running, not after it finished.
    assert len(interrupted) >= 2, interrupted


def test_statement_failing_half_way(cluster):
    """Row 500 of 1000 breaks a constraint: ingest_many, INSERT ... SELECT and COPY leave nothing behind."""
    now = dt.datetime.now(dt.timezone.utc)
    rng = rng_for("half-way")
    with cluster.connect(autocommit=True) as conn:
        exact(conn)
        stats_before = conn.execute("SELECT entity_key, data FROM killboard.stats ORDER BY 1").fetchall()
        count_before = conn.execute("SELECT count(*) FROM killboard.killmails").fetchone()[0]
        deltas_before = conn.execute("SELECT count(*) FROM killboard.stats_delta").fetchone()[0]

        kms = [synth_killmail(rng, 88_000_000 + i, now, 94_000_000) for i in range(1000)]
        bad = [dict(k) for k in kms]
        bad[499] = dict(bad[499], victim=dict(bad[499]["victim"], ship_type_id=-3))
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb(bad),))
        assert e.value.sqlstate == "22023" and "$[499].victim.ship_type_id" in str(e.value)

        # Valid JSON, but row 500 breaks a table constraint only the INSERT sees (id beyond int4).
        big = [dict(k) for k in kms]
        big[499] = dict(big[499], solar_system_id=3_000_000_000)
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT killboard.ingest_many(%s::jsonb)", (jb(big),))
        assert e.value.sqlstate and e.value.sqlstate != "XX000", e.value

        # Plain SQL: 1000 killmails, then attackers where row 500 has a negative character id.
        with pytest.raises(psycopg.errors.CheckViolation):
            with conn.transaction():
                conn.execute("""INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id,
                                victim_corporation_id, victim_ship_type_id, total_value)
                                SELECT 87000000 + g, now() - g * interval '1 hour', 30000142, 98900001, 587, g
                                  FROM generate_series(1, 1000) g""")
                conn.execute("""INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id, final_blow)
                                SELECT 87000000 + g, 0, CASE WHEN g = 500 THEN -1 ELSE 93900000 + g % 20 END, 98900002, true
                                  FROM generate_series(1, 1000) g""")
        # The same in one autocommit statement that fails at row 500.
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("""INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id,
                            victim_corporation_id, victim_ship_type_id, total_value)
                            SELECT 87000000 + g, now(), 30000142, 98900001, CASE WHEN g = 500 THEN 0 ELSE 587 END, g
                              FROM generate_series(1, 1000) g""")
        # COPY: line 500 of 1000 breaks the primary key of an earlier line.
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.cursor().copy("COPY killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_corporation_id,"
                                    " victim_ship_type_id) FROM STDIN") as cp:
                for g in range(1, 1001):
                    cp.write_row((86_000_000 + (1 if g == 500 else g), now, 30000142, 98900001, 587))

        assert conn.execute("SELECT count(*) FROM killboard.killmails").fetchone()[0] == count_before
        assert conn.execute("SELECT entity_key, data FROM killboard.stats ORDER BY 1").fetchall() == stats_before
        assert conn.execute("SELECT count(*) FROM killboard.stats_delta").fetchone()[0] == deltas_before
        exact(conn)
