"""Issue 7: the killboard roles are cluster-wide, so CREATE EXTENSION in two
databases at once must not trip over each other creating them.

The race is made deterministic: the first CREATE EXTENSION stays in an open
transaction holding its freshly created (uncommitted) roles, and the second,
in another database, is seen waiting on that transaction before the first
commits or rolls back. Needs a cluster where nothing else uses the roles (as
in `make test`): they are dropped first.
"""
import threading
import time
import uuid

import psycopg
import pytest
from psycopg import errors

from conftest import BASE_DSN, dsn_for

ROLES = ("killboard_admin", "killboard_writer", "killboard_reader")


@pytest.fixture
def fresh_dbs():
    names = ["kbroles_" + uuid.uuid4().hex[:10] for _ in range(2)]
    with psycopg.connect(BASE_DSN, autocommit=True) as c:
        for n in names:
            c.execute(f'CREATE DATABASE "{n}"')
    yield names
    with psycopg.connect(BASE_DSN, autocommit=True) as c:
        for n in names:
            c.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


def drop_roles():
    with psycopg.connect(BASE_DSN, autocommit=True) as c:
        try:
            c.execute("DROP ROLE IF EXISTS " + ", ".join(ROLES))
        except errors.DependentObjectsStillExist as e:
            pytest.skip(f"the killboard roles are in use elsewhere in this cluster, cannot test their creation: {e}")


def role_state():
    with psycopg.connect(BASE_DSN, autocommit=True) as c:
        roles = {r[0] for r in c.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'killboard\\_%'")}
        members = set(c.execute(
            "SELECT g.rolname, m.rolname FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid"
            " JOIN pg_roles m ON m.oid = am.member WHERE g.rolname LIKE 'killboard\\_%'").fetchall())
    return roles, members


def race(dbs, version, finish):
    """CREATE EXTENSION in dbs[0] (left open), then in dbs[1] (seen waiting), then finish dbs[0]."""
    drop_roles()
    clause = f" VERSION '{version}'" if version else ""
    first = psycopg.connect(dsn_for(dbs[0]), autocommit=False)
    second = psycopg.connect(dsn_for(dbs[1]), autocommit=True)
    outcome = {}
    try:
        first.execute("CREATE EXTENSION pg_killboard" + clause)
        pid = second.info.backend_pid

        def run():
            try:
                second.execute("CREATE EXTENSION pg_killboard" + clause)
                outcome["ok"] = True
            except psycopg.Error as e:
                outcome["error"] = e

        t = threading.Thread(target=run)
        t.start()
        with psycopg.connect(BASE_DSN, autocommit=True) as watch:
            deadline = time.monotonic() + 60
            while True:
                w = watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                if w and w[0] == "Lock":
                    break
                assert "error" not in outcome and "ok" not in outcome, \
                    f"the second CREATE EXTENSION did not wait for the first: {outcome}"
                assert time.monotonic() < deadline, "the second CREATE EXTENSION never waited for the first"
                time.sleep(0.05)
        finish(first)
        t.join(120)
        assert not t.is_alive()
    finally:
        first.close()
        second.close()
    return outcome


def installed(db):
    with psycopg.connect(dsn_for(db), autocommit=True) as c:
        return c.execute(
            "SELECT extversion, has_table_privilege('killboard_writer', 'killboard.killmails', 'INSERT'),"
            " has_table_privilege('killboard_writer', 'killboard.stats', 'UPDATE'),"
            " has_function_privilege('killboard_admin', 'killboard.rebuild_stats()', 'EXECUTE'),"
            " has_function_privilege('killboard_reader', 'killboard.rebuild_stats()', 'EXECUTE')"
            " FROM pg_extension WHERE extname = 'pg_killboard'").fetchone()


EXPECTED_MEMBERS = {("killboard_reader", "killboard_writer"), ("killboard_writer", "killboard_admin")}


def test_concurrent_create_extension_when_the_first_commits(fresh_dbs):
    outcome = race(fresh_dbs, None, lambda c: c.commit())
    assert outcome == {"ok": True}, outcome
    assert role_state() == (set(ROLES), EXPECTED_MEMBERS)
    for db in fresh_dbs:
        version, writer_ins, writer_upd_stats, admin_rebuild, reader_rebuild = installed(db)
        assert (writer_ins, writer_upd_stats, admin_rebuild, reader_rebuild) == (True, False, True, False), db


def test_concurrent_create_extension_when_the_first_rolls_back(fresh_dbs):
    outcome = race(fresh_dbs, None, lambda c: c.rollback())
    assert outcome == {"ok": True}, outcome
    # The second database created the roles itself.
    assert role_state() == (set(ROLES), EXPECTED_MEMBERS)
    assert installed(fresh_dbs[1])[1:] == (True, False, True, False)


def test_version_0_1_0_had_the_race(fresh_dbs):
    """The setup above reproduces the bug: the 0.1.0 script fails with 23505."""
    outcome = race(fresh_dbs, "0.1.0", lambda c: c.commit())
    assert isinstance(outcome.get("error"), errors.UniqueViolation), outcome
    # The first database's script ran whole: the roles are complete for whatever runs next.
    assert role_state() == (set(ROLES), EXPECTED_MEMBERS)
