"""A writing transaction that reads the store mid-way (top_entities, verify_stats,
stats_summary publish its unflushed deltas) and then writes more must not deadlock
with another one doing the same in the opposite order.

The interleaving is forced: each transaction writes a killmail with entities of its
own, calls top_entities(), then writes a killmail with the other's entities, and both
commit at once. Merging deltas into stats rows mid-way would leave each holding a new
key the other's commit-time insert waits for (40P01); appending them cannot."""
import threading

import psycopg
from psycopg.types.json import Jsonb

from conftest import verify


def km(kid, victim, attacker):
    return {
        "killmail_id": kid, "killmail_time": "2024-03-01T12:00:00Z", "solar_system_id": 30000142,
        "victim": {"character_id": victim, "corporation_id": victim + 1, "ship_type_id": 587},
        "attackers": [{"character_id": attacker, "corporation_id": attacker + 1, "final_blow": True,
                       "ship_type_id": 587, "damage_done": 10}],
        "zkb": {"totalValue": 1000},
    }


def test_readers_inside_writing_transactions_do_not_deadlock(connect):
    rounds = 6
    errors = []
    for r in range(rounds):
        base = 7_000_000 + r * 100
        x, y = base + 10, base + 20  # entity families of A and B (new each round)
        a, b = connect(autocommit=False), connect(autocommit=False)
        for c in (a, b):
            c.execute("SET deadlock_timeout = '100ms'")
            c.execute("SET lock_timeout = '20s'")
        a.execute("SELECT killboard.ingest(%s)", [Jsonb(km(base + 1, x, x + 2))])
        b.execute("SELECT killboard.ingest(%s)", [Jsonb(km(base + 2, y, y + 2))])
        for c in (a, b):
            c.execute("SELECT count(*) FROM killboard.top_entities('character', 'all', 'kills', 5)")
        a.execute("SELECT killboard.ingest(%s)", [Jsonb(km(base + 3, y, y + 2))])
        b.execute("SELECT killboard.ingest(%s)", [Jsonb(km(base + 4, x, x + 2))])
        go = threading.Barrier(2)

        def commit(c):
            go.wait()
            try:
                c.commit()
            except psycopg.Error as e:
                errors.append(f"round {r}: {e.sqlstate} {e}")
                c.rollback()

        ts = [threading.Thread(target=commit, args=(c,)) for c in (a, b)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        a.close()
        b.close()
    assert errors == []
    c = connect()
    assert c.execute("SELECT count(*) FROM killboard.killmails WHERE killmail_id >= 7000000").fetchone()[0] == 4 * rounds
    assert verify(c) == []
    # Each family: victim of two killmails and two kills by its attacker.
    row = c.execute("SELECT losses FROM killboard.entity_stats(7000010, 'character', 'all')").fetchone()
    assert row == (2,)
