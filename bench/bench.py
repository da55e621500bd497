"""pg_killboard benchmarks against the seed design, side by side in one run.

Called by bench/run.sh, which builds and installs the extension and starts the
cluster. Every measure runs the contenders on the same rows, one after the
other, and reports ratios (the machine is shared and noisy; ratios travel).

Contenders:
  off   killboard tables with SET killboard.maintain_stats = off (plain insert)
  on    pg_killboard with stats maintained
  seed  the seed design ($KILLBOARD_SHARED/bench/seed_reference.sql): a PL/pgSQL
        row trigger upserting one wide stats row per credited entity
"""

import datetime
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PGBIN = Path(os.environ["PGBIN"])
PORT = int(os.environ.get("BENCH_PORT", "28830"))
QUICK = os.environ.get("BENCH_QUICK", "0") == "1"
N = int(os.environ.get("BENCH_N", 20_000 if QUICK else 200_000))
CLIENTS = [int(x) for x in os.environ.get("BENCH_CLIENTS", "1 4").split()]
HOT_CLIENTS = [int(x) for x in os.environ.get("BENCH_HOT_CLIENTS", "4 8").split()]
DURATION = int(os.environ.get("BENCH_DURATION", 5 if QUICK else 20))
# The hot-entity fight runs each side twice (off, on, on, off): half as long
# a run keeps a side's measured time and the whole run's length as they were.
HOT_DURATION = max(5, DURATION // 2)
BACKFILL_N = int(os.environ.get("BENCH_BACKFILL_N", 200_000 if QUICK else 2_000_000))
SHARED = Path(os.environ.get("KILLBOARD_SHARED", ROOT.parent / "shared"))
# BENCH_ONLY="reads windows" runs the bulk ingest (the others read its data)
# plus the named measures; such partial runs leave the README alone.
ONLY = set(os.environ.get("BENCH_ONLY", "").split())


def wanted(name):
    return not ONLY or name in ONLY
SEED_SQL = SHARED / "bench" / "seed_reference.sql"
DB = "bench"
DSN = f"host=/tmp port={PORT} user=postgres dbname={DB}"
SQL_BATCH = 5_000     # killmails per transaction, INSERT ... SELECT
JSON_BATCH = 1_000    # killmails per ingest_many call / transaction
KINDS = {1: "character", 2: "corporation", 3: "alliance", 4: "faction", 5: "ship_type",
         6: "ship_group", 7: "solar_system", 8: "constellation", 9: "region"}

R = {"measures": {}, "notes": []}


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def connect(**kw):
    return psycopg.connect(DSN, autocommit=True, **kw)


def psql_file(path):
    subprocess.run([str(PGBIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "/tmp", "-p", str(PORT),
                    "-U", "postgres", "-d", DB, "-f", str(path)], check=True, stdout=subprocess.DEVNULL)


def timed(cur, sql, params=None):
    t = time.perf_counter()
    cur.execute(sql, params)
    return time.perf_counter() - t


# --------------------------------------------------------------------------
# Synthetic killmails: skewed popularity as in gen_rows.sql (a few hot
# alliances, a long tail of characters), 1..9 attackers (mean ~3.7), times
# spread over the last 120 days.
# --------------------------------------------------------------------------
SETUP_SQL = """
CREATE SCHEMA bench;
CREATE TABLE bench.src_km (
  killmail_id bigint PRIMARY KEY, killmail_time timestamptz NOT NULL, solar_system_id int NOT NULL,
  victim_character_id bigint, victim_corporation_id bigint, victim_alliance_id bigint,
  victim_ship_type_id int NOT NULL, total_value numeric(20,2) NOT NULL, solo bool NOT NULL, npc bool NOT NULL,
  natt int NOT NULL);
CREATE TABLE bench.src_att (
  killmail_id bigint NOT NULL, attacker_index int NOT NULL, character_id bigint, corporation_id bigint,
  alliance_id bigint, ship_type_id int, damage_done bigint NOT NULL, final_blow bool NOT NULL,
  PRIMARY KEY (killmail_id, attacker_index));
CREATE FUNCTION bench.gen(n int, first_id bigint, days float8) RETURNS void LANGUAGE sql AS $$
  INSERT INTO bench.src_km
  SELECT first_id + g, date_trunc('second', now() - random() * days * interval '1 day'),
         30000001 + (random()^2 * 8000)::int,
         vc, 98000000 + vc % 200000,
         CASE WHEN vc % 5 = 0 THEN NULL ELSE 99000000 + ((vc % 200000) % 5000) END,
         (random() * 500)::int + 580, round((exp(random() * 20))::numeric, 2),
         natt = 1 AND random() < 0.5, random() < 0.05, natt
  FROM (SELECT g, 90000000 + (random()^3 * 2000000)::bigint AS vc, 1 + (random()^2 * 8)::int AS natt
          FROM generate_series(1, n) g) s;
  INSERT INTO bench.src_att
  SELECT killmail_id, i, ac, 98000000 + ac % 200000,
         CASE WHEN ac % 7 = 0 THEN NULL ELSE 99000000 + ((ac % 200000) % 5000) END,
         (random() * 500)::int + 580, (random() * 5000)::int, i = 0
  FROM (SELECT k.killmail_id, i, 90000000 + (random()^3 * 2000000)::bigint AS ac
          FROM bench.src_km k, generate_series(0, k.natt - 1) i
         WHERE k.killmail_id > first_id) s;
$$;
-- One killmail as ingest() takes it (a zKillboard API element).
CREATE FUNCTION bench.doc(k bench.src_km, new_id bigint) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'killmail_id', new_id,
    'killmail_time', to_char(k.killmail_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
    'solar_system_id', k.solar_system_id,
    'victim', jsonb_strip_nulls(jsonb_build_object('character_id', k.victim_character_id,
        'corporation_id', k.victim_corporation_id, 'alliance_id', k.victim_alliance_id,
        'ship_type_id', k.victim_ship_type_id, 'damage_taken', 1000)),
    'attackers', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object('character_id', a.character_id,
        'corporation_id', a.corporation_id, 'alliance_id', a.alliance_id, 'ship_type_id', a.ship_type_id,
        'damage_done', a.damage_done, 'final_blow', a.final_blow)) ORDER BY a.attacker_index)
        FROM bench.src_att a WHERE a.killmail_id = k.killmail_id),
    'zkb', jsonb_build_object('totalValue', k.total_value, 'points', 1, 'npc', k.npc, 'solo', k.solo, 'awox', false))
$$;
CREATE SEQUENCE bench.kid START 1000000000;
"""


def load_sql_batch(cur, lo, hi):
    """Plain INSERT ... SELECT of killmails (lo, hi] and their attackers, one transaction."""
    cur.execute("""
      INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_character_id,
          victim_corporation_id, victim_alliance_id, victim_ship_type_id, attacker_count, total_value,
          points, npc, solo, awox)
      SELECT killmail_id, killmail_time, solar_system_id, victim_character_id, victim_corporation_id,
             victim_alliance_id, victim_ship_type_id, natt, total_value, 1, npc, solo, false
        FROM bench.src_km WHERE killmail_id > %s AND killmail_id <= %s""", (lo, hi))
    cur.execute("""
      INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id, alliance_id,
          ship_type_id, damage_done, final_blow)
      SELECT killmail_id, attacker_index, character_id, corporation_id, alliance_id, ship_type_id,
             damage_done, final_blow
        FROM bench.src_att WHERE killmail_id > %s AND killmail_id <= %s""", (lo, hi))


SEED_INSERT = """
  INSERT INTO seedref.killmails
  SELECT k.killmail_id, k.killmail_time, k.solar_system_id, k.victim_character_id, k.victim_corporation_id,
         k.victim_alliance_id, k.victim_ship_type_id, a.character_id, a.corporation_id, a.alliance_id,
         k.total_value, k.solo, k.npc
    FROM bench.src_km k JOIN bench.src_att a ON a.killmail_id = k.killmail_id AND a.final_blow
   WHERE k.killmail_id > %s AND k.killmail_id <= %s"""


def reset_killboard(cur, mode="involved"):
    cur.execute("SET killboard.maintain_stats = off")
    cur.execute("TRUNCATE killboard.killmails, killboard.attackers, killboard.items CASCADE")
    cur.execute("SET killboard.maintain_stats = on")
    cur.execute("SET killboard.kill_credit = %s" % ("'final_blow'" if mode == "final_blow" else "'involved'"))
    cur.execute("SELECT killboard.rebuild_stats()")
    cur.execute("VACUUM killboard.stats, killboard.stats_delta, killboard.killmails, killboard.attackers")
    cur.execute("RESET killboard.kill_credit")
    cur.execute("CHECKPOINT")


def reset_seed(cur, trigger=True):
    cur.execute("TRUNCATE seedref.killmails, seedref.stats")
    cur.execute("ALTER TABLE seedref.killmails %s TRIGGER stats_on_insert" % ("ENABLE" if trigger else "DISABLE"))
    cur.execute("CHECKPOINT")


def bulk_run(conn, name, kind, stats=True, mode="involved"):
    """Load the N staged killmails through one path; returns seconds."""
    cur = conn.cursor()
    first = cur.execute("SELECT min(killmail_id) - 1, max(killmail_id) FROM bench.src_km").fetchone()
    lo0, hi0 = first
    if kind == "seed":
        reset_seed(cur, trigger=stats)
    else:
        reset_killboard(cur, mode)
    cur.execute("SET killboard.maintain_stats = %s" % ("on" if stats else "off"))
    total = 0.0
    if kind == "json":
        batches = [r[0] for r in cur.execute("SELECT b FROM bench.json_batch ORDER BY b").fetchall()]
        for b in batches:
            t = time.perf_counter()
            with conn.transaction():
                cur.execute("SELECT killboard.ingest_many(doc) FROM bench.json_batch WHERE b = %s", (b,))
            total += time.perf_counter() - t
    else:
        lo = lo0
        while lo < hi0:
            hi = min(lo + (SQL_BATCH if kind == "sql" else SQL_BATCH), hi0)
            t = time.perf_counter()
            with conn.transaction():
                if kind == "sql":
                    load_sql_batch(cur, lo, hi)
                else:
                    cur.execute(SEED_INSERT, (lo, hi))
            total += time.perf_counter() - t
            lo = hi
    cur.execute("RESET killboard.maintain_stats")
    log(f"  bulk {name}: {total:.2f} s, {N / total:,.0f} killmails/s")
    return total


def measure_bulk(conn, have_seed):
    cur = conn.cursor()
    log(f"bulk ingest: staging {N:,} killmails")
    cur.execute("TRUNCATE bench.src_km, bench.src_att")
    cur.execute("SELECT bench.gen(%s, 0, 120)", (N,))
    cur.execute("DROP TABLE IF EXISTS bench.json_batch")
    cur.execute(f"""CREATE TABLE bench.json_batch AS
        SELECT (k.killmail_id - 1) / {JSON_BATCH} AS b, jsonb_agg(bench.doc(k, k.killmail_id)) AS doc
          FROM bench.src_km k GROUP BY 1""")
    cur.execute("ANALYZE bench.src_km, bench.src_att, bench.json_batch")
    natt = cur.execute("SELECT count(*)::float8 / %s FROM bench.src_att", (N,)).fetchone()[0]
    runs = [("json_off", "json", False, "involved"), ("json_on", "json", True, "involved"),
            ("sql_off", "sql", False, "involved"), ("sql_on", "sql", True, "involved"),
            ("json_on_final_blow", "json", True, "final_blow"), ("sql_on_final_blow", "sql", True, "final_blow")]
    if have_seed:
        runs += [("seed_plain", "seed", False, None), ("seed", "seed", True, None)]
    # json_on last: the store it leaves behind feeds the later measures.
    runs.append(("json_on_final", "json", True, "involved"))
    t = {}
    for name, kind, stats, mode in runs:
        t[name] = bulk_run(conn, name, kind, stats, mode)
    m = {"n": N, "attackers_per_killmail": round(natt, 2), "seconds": {k: round(v, 3) for k, v in t.items()},
         "killmails_per_s": {k: round(N / v) for k, v in t.items()}}
    on = min(t["json_on"], t["json_on_final"])
    m["ingest_many_on_vs_off"] = round(on / t["json_off"], 3)
    m["sql_on_vs_off"] = round(t["sql_on"] / t["sql_off"], 3)
    fb_cost = (t["json_on_final_blow"] - t["json_off"]) / N * 1e6
    fb_cost_sql = (t["sql_on_final_blow"] - t["sql_off"]) / N * 1e6
    m["stats_cost_us_final_blow"] = {"ingest_many": round(fb_cost, 2), "insert_select": round(fb_cost_sql, 2)}
    if have_seed:
        seed_cost = (t["seed"] - t["seed_plain"]) / N * 1e6
        m["seed_cost_us"] = round(seed_cost, 2)
        m["seed_vs_on"] = round(t["seed"] / on, 3)
        m["seed_vs_plain_seed"] = round(t["seed"] / t["seed_plain"], 3)
        m["stats_cost_vs_seed"] = round(fb_cost / seed_cost, 4)
        m["stats_cost_vs_seed_sql"] = round(fb_cost_sql / seed_cost, 4)
    R["measures"]["bulk"] = m
    return m


# --------------------------------------------------------------------------
# pgbench: one killmail per transaction, and the hot-entity fight.
# --------------------------------------------------------------------------
PGBENCH_SETUP = """
DROP TABLE IF EXISTS bench.one_doc, bench.one_seed, bench.hot_doc, bench.hot_seed;
CREATE TABLE bench.one_doc AS
  SELECT row_number() OVER (ORDER BY killmail_id)::int AS rn, bench.doc(k, 0) - 'killmail_id' AS doc
    FROM bench.src_km k ORDER BY killmail_id LIMIT 20000;
ALTER TABLE bench.one_doc ADD PRIMARY KEY (rn);
CREATE TABLE bench.one_seed AS
  SELECT row_number() OVER (ORDER BY k.killmail_id)::int AS rn, k.killmail_time, k.solar_system_id,
         k.victim_character_id, k.victim_corporation_id, k.victim_alliance_id, k.victim_ship_type_id,
         a.character_id, a.corporation_id, a.alliance_id, k.total_value, k.solo, k.npc
    FROM bench.src_km k JOIN bench.src_att a ON a.killmail_id = k.killmail_id AND a.final_blow
   ORDER BY k.killmail_id LIMIT 20000;
ALTER TABLE bench.one_seed ADD PRIMARY KEY (rn);
-- Two alliances fighting: 20 characters (10 a side), 4 corporations, 2 alliances;
-- the victim from one side, 2..5 attackers from the other.
CREATE TEMP TABLE hot_km AS
  SELECT g AS rn, (random() * 19)::int AS vc, 2 + (random() * 3)::int AS natt,
         date_trunc('second', now() - random() * interval '20 days') AS t,
         round((exp(random() * 20))::numeric, 2) AS v
    FROM generate_series(1, 5000) g;
CREATE TEMP TABLE hot_att AS
  SELECT h.rn, i AS idx, (1 - h.vc / 10) * 10 + (random() * 9)::int AS ac
    FROM hot_km h, generate_series(0, h.natt - 1) i;
CREATE TABLE bench.hot_doc AS
  SELECT h.rn, jsonb_build_object(
      'killmail_time', to_char(h.t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
      'solar_system_id', 30000142,
      'victim', jsonb_build_object('character_id', 95000000 + h.vc, 'corporation_id', 98500000 + h.vc / 5,
                                   'alliance_id', 99500000 + h.vc / 10, 'ship_type_id', 587, 'damage_taken', 1000),
      'attackers', (SELECT jsonb_agg(jsonb_build_object('character_id', 95000000 + a.ac,
                        'corporation_id', 98500000 + a.ac / 5, 'alliance_id', 99500000 + a.ac / 10,
                        'ship_type_id', 587, 'damage_done', 100, 'final_blow', a.idx = 0) ORDER BY a.idx)
                      FROM hot_att a WHERE a.rn = h.rn),
      'zkb', jsonb_build_object('totalValue', h.v, 'points', 1, 'npc', false, 'solo', false, 'awox', false)) AS doc
    FROM hot_km h;
ALTER TABLE bench.hot_doc ADD PRIMARY KEY (rn);
CREATE TABLE bench.hot_seed AS
  SELECT h.rn, h.t AS killmail_time, 30000142 AS solar_system_id, 95000000 + h.vc::bigint AS victim_character_id,
         98500000 + h.vc / 5::bigint AS victim_corporation_id, 99500000 + h.vc / 10::bigint AS victim_alliance_id,
         587 AS victim_ship_type_id, 95000000 + a.ac::bigint AS character_id, 98500000 + a.ac / 5::bigint AS corporation_id,
         99500000 + a.ac / 10::bigint AS alliance_id, h.v AS total_value, false AS solo, false AS npc
    FROM hot_km h JOIN hot_att a ON a.rn = h.rn AND a.idx = 0;
ALTER TABLE bench.hot_seed ADD PRIMARY KEY (rn);
ANALYZE bench.one_doc, bench.one_seed, bench.hot_doc, bench.hot_seed;
"""

SCRIPT_INGEST = """\\set r random(1, {n})
SELECT killboard.ingest(doc || jsonb_build_object('killmail_id', nextval('bench.kid'))) FROM bench.{table} WHERE rn = :r;
"""
SCRIPT_SEED = """\\set r random(1, {n})
INSERT INTO seedref.killmails SELECT nextval('bench.kid'), killmail_time, solar_system_id, victim_character_id,
  victim_corporation_id, victim_alliance_id, victim_ship_type_id, character_id, corporation_id, alliance_id,
  total_value, solo, npc FROM bench.{table} WHERE rn = :r;
"""


def pgbench(script, clients, duration, stats_off=False):
    """Run pgbench; returns tps, latency stats from the per-transaction log, failures."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o777)
        sf = Path(d) / "script.sql"
        sf.write_text(script)
        env = dict(os.environ)
        env["PGOPTIONS"] = "-c killboard.maintain_stats=off" if stats_off else ""
        cmd = [str(PGBIN / "pgbench"), "-n", "-h", "/tmp", "-p", str(PORT), "-U", "postgres", "-M", "prepared",
               "-c", str(clients), "-j", str(clients), "-T", str(duration), "-f", str(sf),
               "--failures-detailed", "-l", f"--log-prefix={d}/log", DB]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        out = p.stdout + p.stderr
        lat, failed = [], 0
        for f in Path(d).glob("log*"):
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) < 3:
                    continue
                if parts[2].isdigit():
                    lat.append(int(parts[2]))
                else:
                    failed += 1
    def grab(pat, cast=float, default=None):
        m = re.search(pat, out)
        return cast(m.group(1)) if m else default
    tps = grab(r"tps = ([\d.]+) \(without initial", float, 0.0)
    aborted = len(re.findall(r"client \d+ aborted", out))
    errs = sorted(set(re.findall(r"ERROR:\s+(.*)", out)))[:5]
    lat.sort()
    res = {
        "_lat": lat,
        "clients": clients, "tps": round(tps, 1), "transactions": len(lat) + failed,
        "failed": grab(r"number of failed transactions: (\d+)", int, failed),
        "deadlocks": grab(r"number of deadlock failures: (\d+)", int, 0),
        "serialization": grab(r"number of serialization failures: (\d+)", int, 0),
        "aborted_clients": aborted,
        "mean_ms": round(statistics.fmean(lat) / 1000, 3) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1] / 1000, 3) if lat else None,
    }
    if errs:
        res["errors"] = errs
    if p.returncode not in (0, 2) or (p.returncode == 2 and not aborted):
        res["pgbench_exit"] = p.returncode
    return res


def merge_runs(runs):
    """One result from several pgbench runs of equal length: tps averaged,
    latency statistics over all their transactions."""
    lat = sorted(x for r in runs for x in r["_lat"])
    m = {k: v for k, v in runs[0].items() if k != "_lat"}
    m["tps"] = round(statistics.fmean(r["tps"] for r in runs), 1)
    m["runs"] = len(runs)
    for k in ("transactions", "failed", "deadlocks", "serialization", "aborted_clients"):
        m[k] = sum(r.get(k) or 0 for r in runs)
    errs = sorted({e for r in runs for e in r.get("errors", [])})[:5]
    if errs:
        m["errors"] = errs
    exits = [r["pgbench_exit"] for r in runs if "pgbench_exit" in r]
    if exits:
        m["pgbench_exit"] = exits[0]
    m["mean_ms"] = round(statistics.fmean(lat) / 1000, 3) if lat else None
    m["p99_ms"] = round(lat[int(len(lat) * 0.99) - 1] / 1000, 3) if lat else None
    return m


def strip_lat(obj):
    """The raw latencies stay out of the results file."""
    if isinstance(obj, dict):
        return {k: strip_lat(v) for k, v in obj.items() if k != "_lat"}
    if isinstance(obj, list):
        return [strip_lat(v) for v in obj]
    return obj


def pgbench_after_advance(cur, script, clients, stats_off, duration=None):
    """A pgbench run from where production is after an advance (pg_cron runs
    it every minute): the appended deltas folded, stats_delta vacuumed, a
    fresh checkpoint. Without it a run appended to the deltas the runs before
    it left (a 20 s run at pgbench's rate piles up more than a day of a
    killboard's traffic)."""
    cur.execute("SELECT killboard.advance_windows()")
    cur.execute("VACUUM killboard.stats_delta")
    cur.execute("CHECKPOINT")
    return pgbench(script, clients, duration or DURATION, stats_off=stats_off)


def measure_single(conn, have_seed):
    log("single killmail per transaction (pgbench)")
    cur = conn.cursor()
    cur.execute(PGBENCH_SETUP)
    # The bulk phase left autovacuum work on the killmail tables; done now, it
    # does not land on whichever contender happens to run first.
    cur.execute("VACUUM ANALYZE killboard.killmails, killboard.attackers, killboard.items, killboard.stats")
    n = cur.execute("SELECT count(*) FROM bench.one_doc").fetchone()[0]
    ing = SCRIPT_INGEST.format(n=n, table="one_doc")
    sd = SCRIPT_SEED.format(n=n, table="one_seed")
    out = {}

    for c in CLIENTS:
        row = {}
        # Off, on, on, off: a drift over the runs (tables growing, autovacuum
        # catching up, the machine's load) weighs on both sides alike.
        runs = [("off", True), ("on", False), ("on", False), ("off", True)]
        got = {"off": [], "on": []}
        for name, off in runs:
            got[name].append(pgbench_after_advance(cur, ing, c, off))
        for name, pair in got.items():
            row[name] = merge_runs(pair)
        if have_seed:
            cur.execute("ALTER TABLE seedref.killmails DISABLE TRIGGER stats_on_insert")
            row["seed_plain"] = pgbench(sd, c, DURATION)
            cur.execute("ALTER TABLE seedref.killmails ENABLE TRIGGER stats_on_insert")
            row["seed"] = pgbench(sd, c, DURATION)
        for k, v in row.items():
            log(f"  {c} client(s) {k}: {v['tps']} tps, mean {v['mean_ms']} ms, p99 {v['p99_ms']} ms, failed {v['failed']}")
        row["on_vs_off_mean_latency"] = ratio(row["on"]["mean_ms"], row["off"]["mean_ms"])
        row["on_vs_off_p99_latency"] = ratio(row["on"]["p99_ms"], row["off"]["p99_ms"])
        if have_seed:
            row["seed_vs_seed_plain_mean_latency"] = ratio(row["seed"]["mean_ms"], row["seed_plain"]["mean_ms"])
            row["seed_vs_on_mean_latency"] = ratio(row["seed"]["mean_ms"], row["on"]["mean_ms"])
        out[str(c)] = row
    R["measures"]["single"] = out


def measure_hot(conn, have_seed):
    log("hot entities: two alliances fighting (pgbench)")
    cur = conn.cursor()
    if cur.execute("SELECT to_regclass('bench.hot_doc') IS NULL").fetchone()[0]:
        cur.execute(PGBENCH_SETUP)  # made by measure_single when it ran
    n = cur.execute("SELECT count(*) FROM bench.hot_doc").fetchone()[0]
    ing = SCRIPT_INGEST.format(n=n, table="hot_doc")
    sd = SCRIPT_SEED.format(n=n, table="hot_seed")
    out = {}
    for c in HOT_CLIENTS:
        row = {}
        # Off, on, on, off (as for one killmail per transaction): a drift
        # over the runs weighs on both sides alike. One run each, off first,
        # gave 0.68x to 1.13x between writer counts of one run.
        off = [pgbench_after_advance(cur, ing, c, True, HOT_DURATION)]
        # The stats-off writers left the store stale: rebuild it (untimed) so
        # the check below sees only what the concurrent stats-on writers did.
        cur.execute("SELECT killboard.rebuild_stats()")
        on = [pgbench_after_advance(cur, ing, c, False, HOT_DURATION) for _ in range(2)]
        # The concurrent writers' stats must be exact.
        cur.execute("SELECT killboard.advance_windows()")
        exact = verify_hot(cur)
        off.append(pgbench_after_advance(cur, ing, c, True, HOT_DURATION))
        log(f"  {c} writers, tps of the runs off, on, on, off: "
            f"{off[0]['tps']}, {on[0]['tps']}, {on[1]['tps']}, {off[1]['tps']}")
        row["off"], row["on"] = merge_runs(off), merge_runs(on)
        row["on"]["hot_entities_exact"] = exact
        if have_seed:
            row["seed"] = pgbench(sd, c, DURATION)
        for k, v in row.items():
            log(f"  {c} writers {k}: {v['tps']} tps, failed {v['failed']} (deadlocks {v['deadlocks']}), "
                f"aborted clients {v['aborted_clients']}, errors {v.get('errors')}")
        row["on_vs_off_tps"] = ratio(row["on"]["tps"], row["off"]["tps"])
        if have_seed:
            row["on_vs_seed_tps"] = ratio(row["on"]["tps"], row["seed"]["tps"])
        out[str(c)] = row
    out["hot_entities_exact"] = all(r["on"]["hot_entities_exact"] for r in out.values())
    R["measures"]["hot"] = out


def verify_hot(cur):
    """Compare the 26 hot entities with the live recomputation (entity_stats_live)."""
    rows = cur.execute("""
      SELECT count(*) FILTER (WHERE (s.kills, s.losses, s.isk_destroyed, s.isk_lost, s.final_blows, s.points,
                                     s.damage_dealt, s.last_kill_time, s.last_loss_time)
                                 IS DISTINCT FROM (l.kills, l.losses, l.isk_destroyed, l.isk_lost, l.final_blows,
                                     l.points, l.damage_dealt, l.last_kill_time, l.last_loss_time))
        FROM (SELECT 95000000 + g AS id, 'character' AS t FROM generate_series(0, 19) g
              UNION ALL SELECT 98500000 + g, 'corporation' FROM generate_series(0, 3) g
              UNION ALL SELECT 99500000 + g, 'alliance' FROM generate_series(0, 1) g) e,
             unnest(ARRAY['all', '7d']) p,
             LATERAL killboard.entity_stats(e.id, e.t, p) s,
             LATERAL killboard.entity_stats_live(e.id, e.t, p) l""").fetchone()
    return rows[0] == 0


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


# --------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------
def append_minute_of_traffic(conn):
    """A minute of traffic at 50k killmails/day: 35 one-killmail transactions.
    Their stats go to killboard.stats_delta (write-behind) until the next
    advance_windows() folds them, so reads and advances are measured in that
    steady state rather than on a store with nothing appended."""
    cur = conn.cursor()
    docs = cur.execute("""SELECT bench.doc(k, 0) - 'killmail_id'
                                   || jsonb_build_object('killmail_time', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                              FROM bench.src_km k ORDER BY random() LIMIT 35""").fetchall()
    for (d,) in docs:
        cur.execute("SELECT killboard.ingest(%s::jsonb || jsonb_build_object('killmail_id', nextval('bench.kid')))",
                    (json.dumps(d),))
    return cur.execute("SELECT count(*) FROM killboard.stats_delta").fetchone()[0]


def measure_reads(conn, have_seed):
    log("reads: entity_stats vs a primary-key lookup of precomputed rows")
    cur = conn.cursor()
    # The phases before this appended (single) and folded (hot) ~100k deltas;
    # pg_cron folds them every minute and autovacuum clears the table within
    # a minute of a fold (its threshold is ~50 + 20 % of a small table), so
    # start from that; a minute of traffic is appended before the timing.
    cur.execute("SELECT killboard.advance_windows()")
    cur.execute("VACUUM killboard.stats_delta")
    kind_case = "CASE s.entity_key >> 59 " + " ".join(f"WHEN {k} THEN '{v}'" for k, v in KINDS.items()) + " END"
    cur.execute("DROP TABLE IF EXISTS bench.precomputed, bench.sample")
    cur.execute(f"""CREATE TABLE bench.precomputed AS
        SELECT e.* FROM killboard.stats s, LATERAL killboard.entity_stats(s.entity_key & 576460752303423487, {kind_case}, 'all') e""")
    cur.execute("ALTER TABLE bench.precomputed ADD PRIMARY KEY (entity_id, entity_type)")
    cur.execute(f"""CREATE TABLE bench.sample AS
        SELECT s.entity_key & 576460752303423487 AS entity_id, {kind_case} AS entity_type FROM killboard.stats s ORDER BY random() LIMIT 20000""")
    cur.execute("VACUUM ANALYZE bench.precomputed, bench.sample")
    entities = cur.execute("SELECT count(*) FROM bench.precomputed").fetchone()[0]
    sample = cur.execute("SELECT entity_id, entity_type FROM bench.sample").fetchall()
    m = {"entities": entities, "appended_deltas": append_minute_of_traffic(conn)}

    # Client-side: one prepared statement per lookup over a Unix socket,
    # alternating rounds so drift hits both equally.
    rconn = psycopg.connect(DSN, autocommit=True, prepare_threshold=0)
    rc = rconn.cursor()
    q_es = "SELECT * FROM killboard.entity_stats(%s, %s, 'all')"
    q_pk = "SELECT * FROM bench.precomputed WHERE entity_id = %s AND entity_type = %s"
    t_es = t_pk = 0.0
    for rnd in range(4):
        part = sample[rnd::4][:2500]
        for q in ((q_es, q_pk) if rnd % 2 == 0 else (q_pk, q_es)):
            t = time.perf_counter()
            for eid, et in part:
                rc.execute(q, (eid, et))
                rc.fetchall()
            dt = time.perf_counter() - t
            if q is q_es:
                t_es += dt
            else:
                t_pk += dt
    calls = 4 * 2500
    m["client_entity_stats_us"] = round(t_es / calls * 1e6, 1)
    m["client_pk_select_us"] = round(t_pk / calls * 1e6, 1)
    m["client_ratio"] = round(t_es / t_pk, 3)

    # Server-side: the same 20k lookups in one statement (no round trips).
    cur.execute("SET enable_hashjoin = off")
    cur.execute("SET enable_mergejoin = off")
    es = []
    pk = []
    for _ in range(3):
        es.append(timed(cur, """SELECT sum(e.kills) FROM bench.sample s,
                       LATERAL killboard.entity_stats(s.entity_id, s.entity_type, 'all') e"""))
        pk.append(timed(cur, """SELECT sum(p.kills) FROM bench.sample s
                       JOIN bench.precomputed p ON p.entity_id = s.entity_id AND p.entity_type = s.entity_type"""))
    cur.execute("RESET enable_hashjoin")
    cur.execute("RESET enable_mergejoin")
    m["server_entity_stats_us"] = round(min(es) / len(sample) * 1e6, 2)
    m["server_pk_select_us"] = round(min(pk) / len(sample) * 1e6, 2)
    m["server_ratio"] = round(min(es) / min(pk), 3)

    # entity_stats_many for 50 characters vs one = ANY lookup of 50 precomputed rows.
    chars = [r[0] for r in cur.execute(
        "SELECT entity_id FROM bench.precomputed WHERE entity_type = 'character' ORDER BY random() LIMIT 10000")]
    groups = [chars[i:i + 50] for i in range(0, len(chars) - 49, 50)][:200]
    q_many = "SELECT * FROM killboard.entity_stats_many(%s, 'character', 'all')"
    q_any = "SELECT * FROM bench.precomputed WHERE entity_type = 'character' AND entity_id = ANY(%s)"
    tm = {q_many: 0.0, q_any: 0.0}
    for q in (q_many, q_any, q_many, q_any):
        t = time.perf_counter()
        for g in groups:
            rc.execute(q, (g,))
            rc.fetchall()
        tm[q] += time.perf_counter() - t
    m["many50_us"] = round(tm[q_many] / (2 * len(groups)) * 1e6, 1)
    m["many50_pk_any_us"] = round(tm[q_any] / (2 * len(groups)) * 1e6, 1)
    m["many50_ratio"] = round(tm[q_many] / tm[q_any], 3)

    if have_seed:
        seed_chars = [r[0] for r in cur.execute(
            "SELECT entity_id FROM seedref.stats WHERE entity_type = 'character' ORDER BY random() LIMIT 20")]
        t = time.perf_counter()
        for c in seed_chars:
            rc.execute("SELECT * FROM seedref.view_stats(%s, 'character', 30)", (c,))
            rc.fetchall()
        m["seed_view_stats_us"] = round((time.perf_counter() - t) / len(seed_chars) * 1e6, 1)
        m["seed_view_vs_entity_stats"] = round(m["seed_view_stats_us"] / m["client_entity_stats_us"], 1)
        m["seed_killmails"] = cur.execute("SELECT count(*) FROM seedref.killmails").fetchone()[0]
    rconn.close()
    log(f"  entity_stats {m['client_entity_stats_us']} us vs pk {m['client_pk_select_us']} us "
        f"(x{m['client_ratio']}); server-side x{m['server_ratio']}; many50 x{m['many50_ratio']}")
    R["measures"]["reads"] = m


# --------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------
def storage(cur, have_seed, label):
    cur.execute("VACUUM killboard.stats, killboard.stats_delta")
    ours = cur.execute("""SELECT pg_total_relation_size('killboard.stats') + pg_total_relation_size('killboard.stats_delta'),
                                 (SELECT count(*) FROM killboard.stats),
                                 (SELECT count(*) FROM killboard.stats_delta),
                                 (SELECT count(*) FROM killboard.stats WHERE entity_key >> 59 IN (1, 2, 3))""").fetchone()
    m = {"bytes": ours[0], "entities": ours[1], "delta_rows": ours[2],
         "bytes_per_entity": round(ours[0] / max(ours[1], 1), 1),
         "avg_row_bytes": cur.execute("SELECT round(avg(pg_column_size(s.*)), 1)::float8 FROM killboard.stats s").fetchone()[0]}
    if have_seed:
        cur.execute("VACUUM seedref.stats")
        s = cur.execute("SELECT pg_total_relation_size('seedref.stats'), (SELECT count(*) FROM seedref.stats)").fetchone()
        m["seed_bytes"] = s[0]
        m["seed_entities"] = s[1]
        m["seed_bytes_per_entity"] = round(s[0] / max(s[1], 1), 1)
    # The same rows rewritten densely: without the free space earlier runs left
    # (rebuilds delete and reinsert) and the half-full index pages that random-order
    # inserts leave, i.e. what a freshly built store of these entities takes.
    # Measured on a dense copy, so the store the next measures run against stays as it is.
    cur.execute("DROP TABLE IF EXISTS bench.stats_copy")
    cur.execute("CREATE TABLE bench.stats_copy (LIKE killboard.stats INCLUDING STORAGE) WITH (fillfactor = 90)")
    cur.execute("INSERT INTO bench.stats_copy SELECT * FROM killboard.stats ORDER BY entity_key")
    cur.execute("ALTER TABLE bench.stats_copy ADD PRIMARY KEY (entity_key)")
    m["compacted_bytes_per_entity"] = round(cur.execute(
        "SELECT pg_total_relation_size('bench.stats_copy')::float8 / greatest(count(*), 1) FROM bench.stats_copy").fetchone()[0], 1)
    cur.execute("DROP TABLE bench.stats_copy")
    R["measures"].setdefault("storage", {})[label] = m
    log(f"  storage ({label}): {m['bytes_per_entity']} B/entity over {m['entities']:,} entities"
        + (f"; seed {m['seed_bytes_per_entity']} B/entity" if have_seed else ""))


# --------------------------------------------------------------------------
# Window advance: a minute of traffic at 50k killmails/day (~35/min) leaves
# each window; as_of is set back one minute inside a rolled-back transaction.
# --------------------------------------------------------------------------
def measure_windows(conn):
    log("window advance at 50k killmails/day")
    cur = conn.cursor()
    cur.execute("SELECT killboard.advance_windows()")
    per_min = 50_000 / 1440
    # Killmails around every window edge (as_of - P), 35 a minute, 5 minutes each side.
    cur.execute("TRUNCATE bench.src_km, bench.src_att")
    base = cur.execute("SELECT coalesce(max(killmail_id), 0) FROM killboard.killmails").fetchone()[0] + 10_000_000
    cur.execute("SELECT bench.gen(%s, %s, 1)", (int(per_min * 10 * 5), base))
    cur.execute("""UPDATE bench.src_km k SET killmail_time = date_trunc('second', st.as_of - p.span
                        + ((k.killmail_id % 600) - 300) * interval '1 second')
                     FROM killboard.stats_state st,
                          (SELECT row_number() OVER () - 1 AS i, x AS span FROM unnest(ARRAY[
                               interval '24 hours', interval '7 days', interval '14 days',
                               interval '30 days', interval '90 days']) x) p
                    WHERE p.i = k.killmail_id % 5""")
    with conn.transaction():
        load_sql_batch(cur, base, base + 10**9)
    cur.execute("SELECT killboard.advance_windows()")
    cur.execute("VACUUM killboard.stats_delta")  # as autovacuum does after a fold (see measure_reads)
    cur.execute("CHECKPOINT")
    times = []
    cpu = []
    deltas = []
    # The backend's own CPU time per advance as well (Linux schedstat, ns):
    # on a shared machine the wall time also counts waiting for a core.
    pid = cur.execute("SELECT pg_backend_pid()").fetchone()[0]

    def cpu_ns():
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                return int(f.read().split()[0])
        except OSError:
            return None
    for i in range(12):
        # as_of = now, then back one minute: the advance covers one minute,
        # and folds the minute's appended deltas.
        cur.execute("SELECT killboard.advance_windows()")
        deltas.append(append_minute_of_traffic(conn))
        with conn.transaction():
            cur.execute("UPDATE killboard.stats_state SET as_of = as_of - interval '1 minute'")
            c0 = cpu_ns()
            t = time.perf_counter()
            cur.execute("SELECT killboard.advance_windows()")
            times.append(time.perf_counter() - t)
            c1 = cpu_ns()
            if c0 is not None and c1 is not None:
                cpu.append((c1 - c0) / 1e9)
            raise_rollback()
    # raise_rollback leaves the transaction blocks rolled back (the stats stay exact).
    times.sort()
    m = {"killmails_per_day": 50_000, "runs": len(times), "median_ms": round(statistics.median(times) * 1e3, 2),
         "max_ms": round(times[-1] * 1e3, 2), "appended_deltas_folded": int(statistics.median(deltas))}
    if cpu:
        m["median_cpu_ms"] = round(statistics.median(cpu) * 1e3, 2)
    R["measures"]["windows"] = m
    log(f"  advance_windows per minute of traffic: median {m['median_ms']} ms, max {m['max_ms']} ms"
        + (f", backend CPU median {m['median_cpu_ms']} ms" if cpu else ""))
    m["rows_per_minute_if_folded_every"] = aging_merge(cur)


# The credit rule the bench's SQL states (involved mode, the kinds the bench's
# killmails carry: no SDE is loaded, so no groups, constellations or regions):
# (kind code, column) for the victim's side, every attacker's side, and the
# place. Column names are the same in bench.src_* and the killboard tables.
VICTIM_KINDS = ((1, "victim_character_id"), (2, "victim_corporation_id"),
                (3, "victim_alliance_id"), (5, "victim_ship_type_id"))
ATTACKER_KINDS = ((1, "character_id"), (2, "corporation_id"), (3, "alliance_id"), (5, "ship_type_id"))
PLACE_KIND = (7, "solar_system_id")
NOT_NULL = {"victim_ship_type_id", "solar_system_id"}


def present(c):
    """The filter a nullable credited column needs (none for a NOT NULL one)."""
    return "" if c in NOT_NULL else f" WHERE {c} IS NOT NULL"


# How many distinct entities the killmails in bench.src_km/src_att credit.
CREDITED_SQL = "SELECT count(*) FROM (\n  " + "\n  UNION ".join(
    [f"SELECT {k}, {c} FROM bench.src_km{present(c)}" for k, c in VICTIM_KINDS]
    + [f"SELECT {PLACE_KIND[0]}, {PLACE_KIND[1]} FROM bench.src_km"]
    + [f"SELECT {k}, {c} FROM bench.src_att{present(c)}" for k, c in ATTACKER_KINDS]) + ") e"


def aging_merge(cur):
    """How many stats rows a minute a design that folded the windows' aging
    every T minutes (instead of every minute) would still rewrite, at 50k
    killmails/day: the distinct entities credited by the killmails leaving the
    five windows in T minutes, divided by T. A row's aging merges only with
    its own other leaves in the same fold, so this bounds what deferring the
    fold (logs, schedules, batches) can save. Killmails are drawn as the
    bench draws them; who is credited does not depend on the time."""
    leaving_per_min = 5 * 50_000 / 1440
    out = {}
    for minutes, draws in ((1, 20), (15, 3), (60, 2), (360, 1), (1440, 1)):
        rows = []
        for _ in range(draws):
            cur.execute("TRUNCATE bench.src_km, bench.src_att")
            cur.execute("SELECT bench.gen(%s, 0, 1)", (round(leaving_per_min * minutes),))
            rows.append(cur.execute(CREDITED_SQL).fetchone()[0])
        out[f"{minutes}min"] = round(statistics.mean(rows) / minutes)
    cur.execute("TRUNCATE bench.src_km, bench.src_att")
    log("  rows a minute if the aging were folded every 1, 15, 60, 360, 1440 minutes: "
        + ", ".join(f"{v:,}" for v in out.values()))
    return out


# --------------------------------------------------------------------------
# Hostile-size killmails: one killmail with 10k attackers and 10k items must be
# accepted in a sane time (issue: reliability). Timed against a 10-attacker one.
# --------------------------------------------------------------------------
def measure_big(conn):
    log("big killmails: 10k attackers + 10k items")
    cur = conn.cursor()

    def doc(kid, n_att, n_items):
        return json.dumps({
            "killmail_id": kid, "killmail_time": "2024-01-01T00:00:00Z", "solar_system_id": 30000142,
            "victim": {"character_id": 95000000, "corporation_id": 98500000, "ship_type_id": 23773,
                       "damage_taken": n_att,
                       "items": [{"item_type_id": 2000 + i % 500, "flag": 11 + i % 20, "quantity_destroyed": 1,
                                  "singleton": 0} for i in range(n_items)]},
            "attackers": [{"character_id": 96000000 + i, "corporation_id": 98600000 + i % 300,
                           "alliance_id": 99600000 + i % 40, "ship_type_id": 587 + i % 50, "damage_done": 1,
                           "final_blow": i == 0} for i in range(n_att)],
            "zkb": {"totalValue": 1e12, "points": 1}})

    base = cur.execute("SELECT coalesce(max(killmail_id), 0) FROM killboard.killmails").fetchone()[0] + 50_000_000
    small = min(timed(cur, "SELECT killboard.ingest(%s::jsonb)", (doc(base + i, 10, 10),)) for i in range(1, 4))
    big = timed(cur, "SELECT killboard.ingest(%s::jsonb)", (doc(base + 10, 10_000, 10_000),))
    verified = cur.execute("SELECT count(*) FROM killboard.verify_stats(50)").fetchone()[0]
    m = {"small_ms": round(small * 1e3, 2), "big_ms": round(big * 1e3, 1), "attackers": 10_000, "items": 10_000,
         "verify_sample_differences": verified}
    R["measures"]["big"] = m
    log(f"  10 attackers: {m['small_ms']} ms; 10k attackers + 10k items: {m['big_ms']} ms")


def raise_rollback():
    raise psycopg.Rollback()


# --------------------------------------------------------------------------
# Backfill: rebuild_stats() vs a plain GROUP BY computing the same stats.
# --------------------------------------------------------------------------
PERIODS = [("all", None), ("90d", "90 days"), ("30d", "30 days"), ("14d", "14 days"), ("7d", "7 days"), ("24h", "24 hours")]


def groupby_sql():
    """The stats for character/corporation/alliance/ship_type/solar_system, every
    period, from the plain tables (involved credit), written to a table."""
    def cols(side):
        out = []
        for p, span in PERIODS:
            w = "true" if span is None else f"k.killmail_time > now() - interval '{span}'"
            out += [f"count(*) FILTER (WHERE {w}) AS {side}_{p}",
                    f"coalesce(sum(k.total_value) FILTER (WHERE {w}), 0) AS isk_{side}_{p}",
                    f"count(*) FILTER (WHERE {w} AND k.solo) AS solo_{side}_{p}",
                    f"count(*) FILTER (WHERE {w} AND k.npc) AS npc_{side}_{p}",
                    f"coalesce(sum(k.points) FILTER (WHERE {w}), 0) AS points_{side}_{p}"]
        out.append(f"max(k.killmail_time) AS last_{side}")
        return ",\n       ".join(out)
    # Per killmail and credited attacker entity: its final blow, damage, and
    # (once per killmail, on the first kind) the attacker count.
    (k0, c0), *rest = ATTACKER_KINDS
    kills = "\n      UNION ALL ".join(
        [f"""SELECT killmail_id, {k0}::int2 AS kind, {c0} AS id, bool_or(final_blow) AS fb, sum(damage_done) AS dmg, max(n) AS n
        FROM (SELECT *, count(*) OVER (PARTITION BY killmail_id) AS n FROM killboard.attackers) a
      {present(c0)} GROUP BY 1, 3"""]
        + [f"""SELECT killmail_id, {k}::int2, {c}, bool_or(final_blow), sum(damage_done), 0
        FROM killboard.attackers{present(c)} GROUP BY 1, 3""" for k, c in rest]
        + [f"SELECT killmail_id, {PLACE_KIND[0]}::int2, {PLACE_KIND[1]}, false, 0, 0 FROM killboard.killmails"])
    losses = "\n      UNION ALL ".join(
        f"SELECT killmail_id, {k}::int2{' AS kind' if i == 0 else ''}, {c}{' AS id' if i == 0 else ''} "
        f"FROM killboard.killmails{present(c)}" for i, (k, c) in enumerate(VICTIM_KINDS))
    return f"""
    CREATE TABLE bench.groupby_out AS
    WITH kl AS (
      SELECT e.kind, e.id, {cols('kills')},
             count(*) FILTER (WHERE e.fb) AS final_blows, sum(e.dmg) AS damage_dealt, sum(e.n) AS attackers_sum
        FROM ({kills}) e JOIN killboard.killmails k USING (killmail_id) GROUP BY 1, 2),
    ls AS (
      SELECT e.kind, e.id, {cols('losses')}, sum(k.victim_damage_taken) AS damage_taken
        FROM ({losses}) e JOIN killboard.killmails k USING (killmail_id) GROUP BY 1, 2)
    SELECT * FROM kl FULL JOIN ls USING (kind, id)"""


def measure_backfill(conn):
    log(f"backfill: staging {BACKFILL_N:,} killmails")
    cur = conn.cursor()
    cur.execute("TRUNCATE bench.src_km, bench.src_att")
    cur.execute("SELECT bench.gen(%s, 0, 365)", (BACKFILL_N,))
    cur.execute("SET killboard.maintain_stats = off")
    cur.execute("TRUNCATE killboard.killmails, killboard.attackers, killboard.items CASCADE")
    with conn.transaction():
        load_sql_batch(cur, 0, BACKFILL_N)
    cur.execute("RESET killboard.maintain_stats")
    cur.execute("TRUNCATE bench.src_km, bench.src_att")
    cur.execute("VACUUM ANALYZE killboard.killmails, killboard.attackers")
    cur.execute("DROP TABLE IF EXISTS bench.groupby_out")
    cur.execute("CHECKPOINT")
    t_rebuild = timed(cur, "SELECT killboard.rebuild_stats()")
    entities = cur.execute("SELECT count(*) FROM killboard.stats").fetchone()[0]
    cur.execute("CHECKPOINT")
    t_group = timed(cur, groupby_sql())
    rows = cur.execute("SELECT count(*) FROM bench.groupby_out").fetchone()[0]
    per_km = t_rebuild / BACKFILL_N
    m = {"killmails": BACKFILL_N, "entities": entities, "groupby_rows": rows,
         "rebuild_s": round(t_rebuild, 2), "groupby_s": round(t_group, 2),
         "rebuild_vs_groupby": round(t_rebuild / t_group, 3),
         "extrapolated_90M_rebuild_min": round(per_km * 90e6 / 60, 1)}
    R["measures"]["backfill"] = m
    log(f"  rebuild_stats {t_rebuild:.1f} s vs GROUP BY {t_group:.1f} s (x{m['rebuild_vs_groupby']}); "
        f"90M ~ {m['extrapolated_90M_rebuild_min']} min")
    storage(cur, False, "after_rebuild")
    cur.execute("DROP TABLE bench.groupby_out")


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def goal(ok):
    return "met" if ok else "NOT met"


def table_rows():
    M = R["measures"]
    rows = []
    b = M.get("bulk")
    if b:
        kps = b["killmails_per_s"]
        rows.append(("Bulk ingest_many, stats on vs off (b/a)",
                     f"{kps['json_off']:,} / {min(kps['json_on'], kps['json_on_final']):,} km/s",
                     f"{b['ingest_many_on_vs_off']}×", "≤ 2×", goal(b["ingest_many_on_vs_off"] <= 2)))
        rows.append(("Bulk INSERT…SELECT (statement triggers), on vs off",
                     f"{kps['sql_off']:,} / {kps['sql_on']:,} km/s", f"{b['sql_on_vs_off']}×", "(info)", ""))
        if "seed" in kps:
            rows.append(("Bulk seed trigger vs pg_killboard on (c/b)",
                         f"{kps['seed']:,} km/s (seed, no trigger {kps['seed_plain']:,})",
                         f"{b['seed_vs_on']}×", "(info)", ""))
            rows.append(("Stats cost per killmail, final_blow, vs seed trigger",
                         f"{b['stats_cost_us_final_blow']['ingest_many']} µs vs {b['seed_cost_us']} µs",
                         f"{b['stats_cost_vs_seed']}", "≤ 0.2", goal(b["stats_cost_vs_seed"] <= 0.2)))
    for c, row in (M.get("single") or {}).items():
        rows.append((f"One killmail/txn, {c} client(s): latency on vs off (runs off, on, on, off)",
                     f"mean {row['off']['mean_ms']} / {row['on']['mean_ms']} ms, p99 {row['off']['p99_ms']} / "
                     f"{row['on']['p99_ms']} ms; tps {row['off']['tps']} / {row['on']['tps']}"
                     + (f"; seed {row['seed']['mean_ms']} ms, {row['seed']['tps']} tps" if "seed" in row else ""),
                     f"{row['on_vs_off_mean_latency']}× (p99 {row['on_vs_off_p99_latency']}×)", "≤ 1.3×",
                     goal(row["on_vs_off_mean_latency"] <= 1.3)))
    for c, row in (M.get("hot") or {}).items():
        if not isinstance(row, dict):
            continue
        fails = row["on"]["failed"] + row["on"]["aborted_clients"]
        seed = row.get("seed")
        rows.append((f"Hot entities, {c} writers: tps on / off (runs off, on, on, off)" + (" / seed" if seed else ""),
                     f"{row['on']['tps']} / {row['off']['tps']}" + (f" / {seed['tps']}" if seed else "")
                     + f"; failures on {fails}, off {row['off']['failed'] + row['off']['aborted_clients']}"
                     + f"; hot stats exact: {'yes' if row['on'].get('hot_entities_exact') else 'NO'}"
                     + (f", seed {seed['failed']} ({seed['deadlocks']} deadlocks)" if seed else ""),
                     f"{row['on_vs_off_tps']}× off" + (f", {row['on_vs_seed_tps']}× seed" if seed else ""),
                     "0 failures, ≥ 0.7× off, ≥ 3× seed, exact",
                     goal(fails == 0 and row["on_vs_off_tps"] >= 0.7 and (not seed or row["on_vs_seed_tps"] >= 3)
                          and row["on"].get("hot_entities_exact", False))))
    r = M.get("reads")
    if r:
        rows.append((f"entity_stats vs PK select of precomputed row (client, prepared; {r.get('appended_deltas', 0):,} appended deltas)",
                     f"{r['client_entity_stats_us']} / {r['client_pk_select_us']} µs",
                     f"{r['client_ratio']}×", "≤ 1.3×", goal(r["client_ratio"] <= 1.3)))
        rows.append(("same, server-side (20k lookups in one statement)",
                     f"{r['server_entity_stats_us']} / {r['server_pk_select_us']} µs",
                     f"{r['server_ratio']}×", "≤ 1.3×", goal(r["server_ratio"] <= 1.3)))
        rows.append(("entity_stats_many, 50 ids vs = ANY over precomputed",
                     f"{r['many50_us']} / {r['many50_pk_any_us']} µs", f"{r['many50_ratio']}×", "(info)", ""))
        if "seed_view_stats_us" in r:
            rows.append(("seed view_stats fallback vs entity_stats",
                         f"{r['seed_view_stats_us']:,} µs ({r['seed_killmails']:,} killmails)",
                         f"{r['seed_view_vs_entity_stats']}×", "(info)", ""))
    bf = M.get("backfill")
    if bf:
        rows.append((f"rebuild_stats() vs GROUP BY, {bf['killmails']:,} killmails",
                     f"{bf['rebuild_s']} / {bf['groupby_s']} s", f"{bf['rebuild_vs_groupby']}×", "≤ 0.5×",
                     goal(bf["rebuild_vs_groupby"] <= 0.5)))
        rows.append(("rebuild_stats() extrapolated to 90M killmails", f"{bf['extrapolated_90M_rebuild_min']} min",
                     "", "≤ 10 min", goal(bf["extrapolated_90M_rebuild_min"] <= 10)))
    w = M.get("windows")
    if w:
        rows.append(("advance_windows() per minute at 50k killmails/day", f"median {w['median_ms']} ms (max {w['max_ms']})"
                     + (f", backend CPU {w['median_cpu_ms']} ms" if "median_cpu_ms" in w else "")
                     + f", folding {w.get('appended_deltas_folded', 0):,} appended deltas",
                     "", "≤ 10 ms", goal(w["median_ms"] <= 10)))
        fold = w.get("rows_per_minute_if_folded_every")
        if fold:
            rows.append(("Stats rows a minute the aging rewrites if folded every 1 min / 15 min / 1 h / 6 h / 1 day",
                         " / ".join(f"{v:,}" for v in fold.values()),
                         f"{round(fold['1min'] / fold['1440min'], 2)}× fewer a day", "(design bound)", ""))
    big = M.get("big")
    if big:
        rows.append(("One killmail with 10k attackers + 10k items (ingest)",
                     f"{big['big_ms']:,} ms vs {big['small_ms']} ms for 10 + 10", "", "accepted, < 10 s",
                     goal(big["big_ms"] < 10_000 and big["verify_sample_differences"] == 0)))
    for label, s in (M.get("storage") or {}).items():
        rows.append((f"Storage per entity ({label.replace('_', ' ')})",
                     f"{s['bytes_per_entity']} B over {s['entities']:,} entities"
                     + (f"; {s['compacted_bytes_per_entity']} B compacted" if "compacted_bytes_per_entity" in s else "")
                     + (f" ({s['delta_rows']} delta rows)" if s["delta_rows"] else ""),
                     f"seed {s['seed_bytes_per_entity']} B" if "seed_bytes_per_entity" in s else "",
                     "≤ 120 B", goal(s["bytes_per_entity"] <= 120)))
    return rows


def markdown():
    e = R["env"]
    head = (f"Run {e['date']} · commit `{e['commit']}` · {e['cores']} cores ({e.get('cpu', '?')}) · {e['pg']} · N={N:,} · "
            f"backfill {BACKFILL_N:,} · pgbench {DURATION}s per run{' · QUICK' if QUICK else ''}\n\n"
            f"Settings (all contenders): {e['settings']}\n\n")
    lines = ["| measure | figures | ratio | goal | |", "|---|---|---|---|---|"]
    for r in table_rows():
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    notes = "".join(f"\n- {n}" for n in R["notes"])
    return head + "\n".join(lines) + ("\n\nNotes:" + notes if notes else "") + "\n"


def update_readme(md):
    readme = ROOT / "README.md"
    text = readme.read_text()
    body = ("## Benchmarks\n\n`make bench` (or `bash bench/run.sh`; `BENCH_QUICK=1` for a short run) builds in release "
            "mode into a private PostgreSQL tree, starts its own cluster and measures pg_killboard against the plain-insert "
            "baseline (`killboard.maintain_stats = off`) and the seed design side by side; results land in "
            "`bench/results/`. Latest run:\n\n" + md + "\n")
    m = re.search(r"^## Benchmarks\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    text = text[:m.start()] + body + text[m.end():] if m else text.rstrip("\n") + "\n\n" + body
    readme.write_text(text)


def cpu_model():
    """The CPU's name as the kernel reports it: figures in time only compare on the same one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main():
    have_seed = SEED_SQL.exists()
    with psycopg.connect(f"host=/tmp port={PORT} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB}")
        c.execute(f"CREATE DATABASE {DB}")
        pg = c.execute("SELECT version()").fetchone()[0].split(" on ")[0]
        settings = {k: c.execute(f"SHOW {k}").fetchone()[0] for k in
                    ("shared_buffers", "synchronous_commit", "fsync", "work_mem", "max_wal_size", "autovacuum")}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "core", "sql"],
                           capture_output=True, text=True).stdout.strip()
    R["env"] = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "commit": commit + ("+dirty" if dirty else ""), "cores": os.cpu_count(), "cpu": cpu_model(), "pg": pg,
                "settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
                "n": N, "backfill_n": BACKFILL_N, "duration_s": DURATION, "quick": QUICK}
    with psycopg.connect(f"host=/tmp port={PORT} user=postgres dbname=postgres", autocommit=True) as c:
        # Profile matching is another component with its own benchmark
        # (bench/profiles.sh); here every contender writes without it.
        c.execute(f"ALTER DATABASE {DB} SET killboard.match_on_ingest = off")
    R["notes"].append("killboard.match_on_ingest = off for every contender: these measures are about stats; "
                      "profile matching has its own benchmark")
    conn = connect()
    conn.execute("CREATE EXTENSION pg_killboard")
    conn.execute(SETUP_SQL)
    if have_seed:
        psql_file(SEED_SQL)
    else:
        R["notes"].append(f"seed column skipped: {SEED_SQL} not found (set KILLBOARD_SHARED)")
        log(R["notes"][-1])
    t0 = time.time()
    measure_bulk(conn, have_seed)
    storage(conn.cursor(), have_seed, "after_bulk_ingest")
    if wanted("single"):
        measure_single(conn, have_seed)
    if wanted("hot"):
        measure_hot(conn, have_seed)
        storage(conn.cursor(), have_seed, "after_concurrency")
    if wanted("reads"):
        measure_reads(conn, have_seed)
    if wanted("windows"):
        measure_windows(conn)
    if wanted("backfill"):
        measure_backfill(conn)
    if wanted("big"):
        measure_big(conn)
    prof = HERE / "profiles.sh"
    if not wanted("profiles"):
        pass
    elif prof.exists():
        log("profiles: bench/profiles.sh")
        env = dict(os.environ, KILLBOARD_PGPORT=str(PORT), KILLBOARD_DSN=DSN, PGBIN=str(PGBIN))
        p = subprocess.run(["bash", str(prof)], capture_output=True, text=True, env=env, cwd=ROOT)
        R["measures"]["profiles"] = {"exit": p.returncode, "output": p.stdout[-4000:]}
    else:
        R["notes"].append("bench/profiles.sh not present: profile matching not measured here")
    R["env"]["total_s"] = round(time.time() - t0)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stem = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M") + "-" + commit + ("-quick" if QUICK else "") + ("-only-" + "-".join(sorted(ONLY)) if ONLY else "")
    (out / f"{stem}.json").write_text(json.dumps(strip_lat(R), indent=2) + "\n")
    md = markdown()
    (out / f"{stem}.md").write_text("# pg_killboard benchmarks\n\n" + md)
    if not ONLY:
        update_readme(md)
    print("\n" + md)
    log(f"results: bench/results/{stem}.json, .md; total {R['env']['total_s']} s")


if __name__ == "__main__":
    main()
