"""Shared helpers of the robustness tests (concurrency, crash, fuzz, replica).

STRESS=1 (set by scripts/stress.sh) scales every test up; without it the
tests stay quick enough for `make test`. Tests that kill or replicate a
cluster start their own, with the binaries in $PGBIN, on ports from
$KILLBOARD_ROBUST_PORT (default 28860) upwards, so the shared test cluster
is never touched.
"""
import datetime as dt
import json
import os
import pathlib
import random
import shutil
import subprocess
import time

import psycopg

ROOT = pathlib.Path(__file__).resolve().parents[2]
STRESS = os.environ.get("STRESS", "") not in ("", "0")
PGBIN = pathlib.Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
BASE_PORT = int(os.environ.get("KILLBOARD_ROBUST_PORT", "28860"))
SOCK = os.environ.get("KILLBOARD_PGSOCK", "/tmp")


def scaled(quick, stress):
    return stress if STRESS else quick


def jb(v):
    return json.dumps(v)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# Hot entities every writer fights over: two alliances, four corporations, twenty characters.
HOT_ALLIANCES = [99900001, 99900002]
HOT_CORPS = [98900001, 98900002, 98900003, 98900004]
HOT_CHARS = [93900000 + i for i in range(20)]


def hot_party(rng):
    i = rng.randrange(len(HOT_CHARS))
    corp = HOT_CORPS[i % 4]
    return HOT_CHARS[i], corp, HOT_ALLIANCES[corp % 2]


def synth_killmail(rng, kid, now, cold_base):
    """A killmail among the hot entities, with a cold (new) character now and then."""
    def party():
        if rng.random() < 0.25:
            c = cold_base + rng.randrange(1_000_000)
            return c, 98950000 + c % 50, None
        return hot_party(rng)

    vch, vco, val = party()
    n = rng.choice([1, 1, 2, 3, 5, 8])
    atts = []
    for j in range(n):
        ch, co, al = party()
        atts.append({"character_id": ch, "corporation_id": co, "alliance_id": al, "damage_done": rng.randrange(5000),
                     "final_blow": j == 0, "ship_type_id": rng.choice([587, 588, 670, 11911])})
    # Spread over every window, including a few just inside their edges.
    age = rng.choice([dt.timedelta(minutes=rng.randrange(600)), dt.timedelta(days=rng.uniform(0, 120)),
                      dt.timedelta(days=7, seconds=-rng.randrange(1, 30))])
    km = {"killmail_id": kid, "killmail_time": iso(now - age), "solar_system_id": rng.choice([30000142, 30000144, 30002187]),
          "victim": {"character_id": vch, "corporation_id": vco, "alliance_id": val, "ship_type_id": rng.choice([587, 670, 24690]),
                     "damage_taken": sum(a["damage_done"] for a in atts),
                     "items": [{"item_type_id": 2488, "flag": 27, "quantity_destroyed": 1, "singleton": 0}]},
          "attackers": atts}
    if rng.random() < 0.8:
        km["zkb"] = {"totalValue": round(rng.uniform(1e5, 5e9), 2), "points": rng.randrange(1, 20),
                     "npc": False, "solo": n == 1, "awox": False}
    return km


def copy_load(conn, kms):
    """Bulk-load killmails the way an operator would: COPY both tables in one transaction."""
    with conn.transaction():
        with conn.cursor() as cur:
            with cur.copy("COPY killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_character_id,"
                          " victim_corporation_id, victim_alliance_id, victim_ship_type_id, victim_damage_taken,"
                          " total_value, points, npc, solo, awox) FROM STDIN") as cp:
                for k in kms:
                    v, z = k["victim"], k.get("zkb", {})
                    cp.write_row((k["killmail_id"], k["killmail_time"], k["solar_system_id"], v["character_id"],
                                  v["corporation_id"], v["alliance_id"], v["ship_type_id"], v["damage_taken"],
                                  z.get("totalValue"), z.get("points"), z.get("npc"), z.get("solo"), z.get("awox")))
            with cur.copy("COPY killboard.attackers (killmail_id, attacker_index, character_id, corporation_id, alliance_id,"
                          " ship_type_id, damage_done, final_blow) FROM STDIN") as cp:
                for k in kms:
                    for i, a in enumerate(k["attackers"]):
                        cp.write_row((k["killmail_id"], i, a["character_id"], a["corporation_id"], a["alliance_id"],
                                      a["ship_type_id"], a["damage_done"], a["final_blow"]))


def free_port(start):
    import socket
    for p in range(start, start + 10):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue
    raise RuntimeError(f"no free port in {start}..{start + 9}")


def as_pg(*args, check=True, **kw):
    cmd = [str(a) for a in args]
    if os.geteuid() == 0:
        cmd = ["sudo", "-u", "postgres"] + cmd
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class Cluster:
    """A throw-away PostgreSQL cluster under target/robust/<name>, run by the postgres user."""

    def __init__(self, name, port):
        self.dir = ROOT / "target" / "robust" / name
        self.port = port
        self.dsn = f"host={SOCK} port={port} user=postgres dbname=killboard"

    def _prepare_dir(self):
        if self.dir.exists():
            self.stop(mode="immediate")
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        d = self.dir
        while d != d.parent:
            try:
                os.chmod(d, os.stat(d).st_mode | 0o001)
            except PermissionError:
                pass
            d = d.parent
        shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)

    def init(self, extra_conf=""):
        self._prepare_dir()
        as_pg(PGBIN / "initdb", "-D", self.dir, "-A", "trust", "-U", "postgres")
        with open(self.dir / "postgresql.conf", "a") as f:
            f.write(self.conf() + extra_conf)
        return self

    def conf(self):
        return (f"\nport = {self.port}\nunix_socket_directories = '{SOCK}'\nlisten_addresses = ''\n"
                "shared_preload_libraries = 'pg_cron'\ncron.database_name = 'killboard'\nmax_connections = 40\n"
                "fsync = on\nshared_buffers = 32MB\nlog_min_messages = warning\n")

    def start(self):
        as_pg(PGBIN / "pg_ctl", "-D", self.dir, "-l", self.dir / "server.log", "-w", "-t", "120", "start")
        return self

    def stop(self, mode="fast"):
        if (self.dir / "PG_VERSION").exists():
            as_pg(PGBIN / "pg_ctl", "-D", self.dir, "-m", mode, "-w", "stop", check=False)

    def postmaster_pid(self):
        return int((self.dir / "postmaster.pid").read_text().split()[0])

    def kill9(self):
        """kill -9 the postmaster, then its orphaned backends (they exit when they notice, but not at once)."""
        pid = self.postmaster_pid()
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        os.kill(pid, 9)
        for c in children:
            try:
                os.kill(int(c), 9)
            except ProcessLookupError:
                pass
        deadline = time.time() + 30
        while time.time() < deadline:
            alive = [c for c in children if pathlib.Path(f"/proc/{c}").exists()]
            if not alive and not pathlib.Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.05)

    def log(self):
        try:
            return (self.dir / "server.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connect(self, dbname="killboard", **kw):
        return psycopg.connect(psycopg.conninfo.make_conninfo(self.dsn, dbname=dbname), **kw)

    def create_db(self):
        with psycopg.connect(psycopg.conninfo.make_conninfo(self.dsn, dbname="postgres"), autocommit=True) as c:
            c.execute("CREATE DATABASE killboard")
        with self.connect(autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_killboard")

    def remove(self):
        self.stop(mode="immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def crash_lines(log):
    """Lines of a server log that show a backend crash (not the ones a kill -9 causes)."""
    bad = ("terminated by signal 11", "terminated by signal 6", "PANIC", "was terminated by signal 7")
    return [line for line in log.splitlines() if any(b in line for b in bad)]


def stats_table(conn):
    return conn.execute("SELECT entity_key, data FROM killboard.stats ORDER BY 1").fetchall()


def rng_for(name):
    seed = int(os.environ.get("KILLBOARD_SEED", "20261127"))
    return random.Random(f"{seed}:{name}")
