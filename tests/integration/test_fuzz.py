"""Issue 7.3: hostile input through the real extension. Seeded mutations of
real killmails (shared ESI corpus and fixtures) go to ingest, ingest_many and
match_profiles(jsonb); mutated filters go into killboard.profiles. Every case
either succeeds or fails with a SQLSTATE that is not XX000, the backend stays
up, and a rejected case leaves no row and no stats behind.

Cases: 1000 per run, 10000 with STRESS=1 (KILLBOARD_FUZZ_CASES overrides).
"""
import copy
import json
import os

import psycopg
import pytest

from conftest import ROOT, SHARED
from robust import jb, rng_for, scaled

CASES = int(os.environ.get("KILLBOARD_FUZZ_CASES") or scaled(1000, 10000))
# Huge arrays: up to 10k elements under STRESS; smaller in make test to keep it quick.
HUGE = scaled([10, 100, 1000], [10, 1000, 10000])
HUGE_BYTES = scaled(300_000, 2_000_000)
BASE_ID = 500_000_000
COUNTS = {}


def seeds():
    out = json.loads((ROOT / "fixtures" / "killmails.json").read_text())
    d = SHARED / "data" / "esi_killmails"
    if d.is_dir():
        out += [json.loads(f.read_text()) for f in sorted(d.glob("[0-9]*.json"))]
    return out


def weird(r):
    k = r.randrange(20)
    return [None, True, "30000142", "Ωmega ☠ 漢字 🚀 \u202ertl", -1, 0, 2**63 - 1, 2**64, 1e308, -1e308, 1.5,
            5e-324, [], {}, -2**63, "2026-13-45T99:99:99Z", "2026-03-25T14:26:36+14:00", 2**31,
            "x" * r.randrange(20000), ["a", 1, None, {"k": []}]][k]


def nodes(v, here=()):
    yield here
    if isinstance(v, dict):
        for k, c in list(v.items()):
            yield from nodes(c, here + (k,))
    elif isinstance(v, list):
        for i, c in enumerate(v[:6]):
            yield from nodes(c, here + (i,))


def get(v, path):
    for s in path:
        v = v[s]
    return v


def put(doc, path, new):
    if not path:
        return new
    get(doc, path[:-1])[path[-1]] = new
    return doc


EDGE_TIMES = ["2920-03-25T14:26:36.123457Z", "2099-12-31T23:59:59.999999Z", "2100-01-01T00:00:00Z",
              "1900-01-01T00:00:00Z", "2026-03-25T14:26:36.5+05:30", "0001-01-01T00:00:00Z", "2026-02-30T00:00:00Z"]


def mutate(doc, r):
    if isinstance(doc, dict) and "killmail_time" in doc and r.random() < 0.1:
        doc["killmail_time"] = r.choice(EDGE_TIMES)
    for _ in range(1 + r.randrange(4)):
        all_ = list(nodes(doc))
        path = r.choice(all_)
        node = get(doc, path)
        op = r.randrange(10)
        if op < 2:
            if isinstance(node, dict) and node:
                del node[r.choice(list(node))]
            elif isinstance(node, list) and node:
                del node[r.randrange(len(node))]
            else:
                doc = put(doc, path, None)
        elif op < 5:
            doc = put(doc, path, weird(r))
        elif op == 5:
            if isinstance(node, list) and node:
                size = max(1, len(json.dumps(node[0])))
                # Real copies, not shared references: a later mutation of one must not grow them all.
                node.extend(json.loads(json.dumps([node[0]] * min(r.choice(HUGE), HUGE_BYTES // size))))
            else:
                doc = put(doc, path, [{"item_type_id": 34, "flag": 5} for _ in range(1 + r.randrange(3000))])
        elif op == 6:
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                doc = put(doc, path, r.choice([node * 1e300, -node, node + 0.5, node * 2**33, str(node),
                                               float("inf"), float("nan")]))
            else:
                doc = put(doc, path, weird(r))
        elif op == 7:
            if isinstance(node, dict):
                node[r.choice(["ключ", "", "💥", "victim ", "killmail_id "])] = weird(r)
        elif op == 8:
            v = node
            for _ in range(1 + r.randrange(150)):
                v = {"items": [v], "item_type_id": 34, "flag": 5} if r.random() < 0.5 else [v]
            doc = put(doc, path, v)
        else:
            doc = put(doc, path, copy.deepcopy(get(doc, r.choice(all_))))
    return doc


def to_text(doc, r):
    """JSON text, sometimes with a duplicate key or a damaged byte (jsonb keeps the last duplicate)."""
    text = json.dumps(doc, allow_nan=True)  # NaN/Infinity are not JSON: jsonb refuses them (22P02)
    roll = r.random()
    if roll < 0.1 and text.startswith("{"):
        text = "{" + r.choice(['"killmail_id": "dup", ', '"attackers": 7, ', '"victim": null, ', '"zkb": {"totalValue": -1}, ']) + text[1:]
    elif roll < 0.15:
        i = r.randrange(len(text))
        text = text[:i] + r.choice('{}[],:"0-e.9xn\\ ') + text[i + 1:]
    elif roll < 0.17:
        text = text.replace('"', '"\\u0000', 1)  # NUL is not allowed in jsonb text (22P05)
    return text


def expect_clean_error(e, what):
    assert isinstance(e, psycopg.Error), e
    state = e.sqlstate
    assert state, f"{what}: no SQLSTATE (backend crash?): {e!r}"
    assert state != "XX000" and not state.startswith("58"), f"{what}: {state} {e}"
    return state


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print(f"\nfuzz: {CASES} ingest cases + {CASES // 4} filter cases; outcomes {dict(sorted(COUNTS.items()))}")


FILTERS = [
    {},
    {"module_tags": ["T2"], "min_value": 100000000, "security_band": ["lowsec"]},
    {"victim_ship_group_ids": [30, 485, 547], "within_jumps": {"system_id": 30003066, "jumps": 5}},
    {"any": [{"min_attackers": 50}, {"min_value": 1000000000}], "not": {"victim_ship_group_ids": [29]}},
    {"all": [{"attacker_alliance_ids": [99000001]}, {"solo": True}], "security_min": -1.0, "security_max": 0.5},
    {"involved_character_ids": [90000001, 90000002], "region_ids": [10000002], "npc": False, "max_value": 5e9},
]


def test_fuzzed_killmails(connect):
    rng = rng_for("fuzz-killmails")
    base = seeds()
    conn = connect()
    # Profiles in place, so matching on ingest sees the hostile killmails too.
    for i, f in enumerate(FILTERS):
        conn.execute("INSERT INTO killboard.profiles (name, filter) VALUES (%s, %s::jsonb)", (f"seed {i}", jb(f)))
    good = copy.deepcopy(base[0])
    rejected_ids = []
    for i in range(CASES):
        doc = copy.deepcopy(rng.choice(base))
        fresh = BASE_ID + i
        doc["killmail_id"] = fresh
        doc = mutate(doc, rng)
        text = to_text(doc, rng)
        assert len(text) < 32_000_000, "the mutator should stay within a few MB"
        in_savepoint = i % 10 == 0
        try:
            if in_savepoint:
                # A valid ingest, then the hostile one in a savepoint: only the hostile one may vanish.
                with conn.transaction():
                    conn.execute("SELECT killboard.ingest(%s::jsonb)", (jb(dict(good, killmail_id=BASE_ID - 1 - i)),))
                    try:
                        with conn.transaction():
                            conn.execute("SELECT killboard.ingest(%s::jsonb)", (text,))
                        COUNTS["accepted"] = COUNTS.get("accepted", 0) + 1
                    except psycopg.Error as e:
                        COUNTS[expect_clean_error(e, f"case {i}")] = COUNTS.get(e.sqlstate, 0) + 1
                        rejected_ids.append(fresh)
            elif i % 7 == 3:
                conn.execute("SELECT killboard.ingest_many(%s::jsonb)", ("[" + text + "]",))
                COUNTS["accepted"] = COUNTS.get("accepted", 0) + 1
            else:
                conn.execute("SELECT killboard.ingest(%s::jsonb)", (text,))
                COUNTS["accepted"] = COUNTS.get("accepted", 0) + 1
        except psycopg.Error as e:
            state = expect_clean_error(e, f"case {i}")
            COUNTS[state] = COUNTS.get(state, 0) + 1
            rejected_ids.append(fresh)
        if i % 5 == 0:
            try:
                conn.execute("SELECT count(*) FROM killboard.match_profiles(%s::jsonb)", (text,))
            except psycopg.Error as e:
                expect_clean_error(e, f"match_profiles case {i}")
        if i % 100 == 0:
            assert conn.execute("SELECT 1").fetchone() == (1,), "backend gone"
    assert COUNTS.get("accepted", 0) > CASES // 20, COUNTS
    # Matching on ingest ran for the accepted ones ('{}' matches every killmail).
    assert conn.execute("SELECT count(*) FROM killboard.profile_matches").fetchone()[0] > 0
    assert sum(v for k, v in COUNTS.items() if k != "accepted") > CASES // 4, COUNTS

    # The valid neighbours of savepoint cases are all there.
    n_good = conn.execute("SELECT count(*) FROM killboard.killmails WHERE killmail_id < %s AND killmail_id >= %s",
                          (BASE_ID, BASE_ID - CASES - 1)).fetchone()[0]
    assert n_good == len(range(0, CASES, 10))
    # A rejected case left no killmail row (unless a later accepted case reused its id: never, ids are per case).
    assert conn.execute("SELECT count(*) FROM killboard.killmails WHERE killmail_id = ANY(%s)", (rejected_ids,)).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM killboard.attackers WHERE killmail_id = ANY(%s)", (rejected_ids,)).fetchone()[0] == 0
    assert conn.execute("SELECT * FROM killboard.verify_stats()").fetchall() == []
    sample = conn.execute("SELECT entity_key & 576460752303423487, (entity_key >> 59)::int2 FROM killboard.stats ORDER BY random() LIMIT 40").fetchall()
    kinds = {1: "character", 2: "corporation", 3: "alliance", 4: "faction", 5: "ship_type", 6: "ship_group",
             7: "solar_system", 8: "constellation", 9: "region"}
    for eid, kind in sample:
        q = "SELECT * FROM killboard.{}(%s, %s, 'all')"
        assert conn.execute(q.format("entity_stats"), (eid, kinds[kind])).fetchone() == \
            conn.execute(q.format("entity_stats_live"), (eid, kinds[kind])).fetchone(), (eid, kind)




def test_fuzzed_profile_filters(connect):
    rng = rng_for("fuzz-filters")
    conn = connect()
    km = json.loads((ROOT / "fixtures" / "killmails.json").read_text())[0]
    conn.execute("SELECT killboard.ingest(%s::jsonb)", (jb(km),))
    accepted = 0
    for i in range(CASES // 4):
        doc = mutate(copy.deepcopy(rng.choice(FILTERS)), rng)
        text = to_text(doc, rng)
        try:
            with conn.transaction():
                pid = conn.execute("INSERT INTO killboard.profiles (name, filter) VALUES (%s, %s::jsonb) RETURNING profile_id",
                                   (f"fuzz {i}", text)).fetchone()[0]
                # Accepted: matching with it works, stored and on demand.
                conn.execute("SELECT count(*) FROM killboard.match_profiles(%s::bigint)", (km["killmail_id"],))
                conn.execute("SELECT count(*) FROM killboard.match_profiles(%s::jsonb)", (jb(km),))
                conn.execute("DELETE FROM killboard.profiles WHERE profile_id = %s", (pid,))
            accepted += 1
            COUNTS["filter accepted"] = COUNTS.get("filter accepted", 0) + 1
        except psycopg.Error as e:
            state = expect_clean_error(e, f"filter case {i}: {text[:200]}")
            COUNTS[f"filter {state}"] = COUNTS.get(f"filter {state}", 0) + 1
            if state in ("22023", "22003", "54000"):
                # Refused by the validator: the message names the JSON path.
                assert "$" in str(e) or "$" in (e.diag.message_detail or ""), e
            else:
                # Only malformed JSON text itself may fail before the validator.
                assert state in ("22P02", "22P05"), (state, e)
    assert accepted > 0
    assert conn.execute("SELECT count(*) FROM killboard.profiles WHERE name LIKE 'fuzz %'").fetchone()[0] == 0


def test_ten_thousand_attackers_and_items(connect):
    conn = connect()
    km = json.loads((ROOT / "fixtures" / "killmails.json").read_text())[1]
    km["killmail_id"] = BASE_ID - 100_000
    a = km["attackers"][0]
    km["attackers"] = [dict(a, character_id=96_000_000 + i, final_blow=i == 0) for i in range(10_000)]
    km["victim"]["items"] = [{"item_type_id": 2488, "flag": 27, "quantity_destroyed": 1, "singleton": 0}] * 10_000
    assert conn.execute("SELECT killboard.ingest(%s::jsonb)", (jb(km),)).fetchone()[0] == km["killmail_id"]
    assert conn.execute("SELECT count(*) FROM killboard.attackers WHERE killmail_id = %s", (km["killmail_id"],)).fetchone()[0] == 10_000
    assert conn.execute("SELECT count(*) FROM killboard.items WHERE killmail_id = %s", (km["killmail_id"],)).fetchone()[0] == 10_000
    assert conn.execute("SELECT kills FROM killboard.entity_stats(96009999, 'character')").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM killboard.match_profiles(%s::bigint)", (km["killmail_id"],)).fetchone()[0] >= 0
