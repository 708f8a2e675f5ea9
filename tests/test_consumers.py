"""Consumers of the stream API on both stores: scopes, tokens (hashed, expiring, revocable),
the audit log, and `edge-collector consumers` (CliRunner and the real command)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from collector.cli import main
from collector.consumers import (
    Consumer,
    ConsumerError,
    Consumers,
    Scope,
    open_consumers,
    parse_scope,
)
from collector.consumers.db import open_db
from collector.consumers.tokens import digest, parse_expiry, parse_name, well_formed
from collector.store import migrate_store
from edge_agent.contract.envelope import CATALOG

HEDONG = "371312001"  # a street of district 371312
COMMUNITY = "371312001001"


@pytest.fixture
def url(store_url: str) -> str:
    """A store of each backend with its schema (SQLite: the file exists)."""
    migrate_store(store_url)
    return store_url


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def consumers(url: str, clock: Clock) -> Iterator[Consumers]:
    c = Consumers(open_db(url), cache_s=0.3, clock=clock)
    yield c
    c.close()


# ----------------------------------------------------------------------------- scopes


def test_a_scope_mixes_district_street_and_community_codes() -> None:
    scope = parse_scope([COMMUNITY, "371312", HEDONG, HEDONG], ["smoke.*", "gate.access"])
    assert scope == Scope(("371312", HEDONG, COMMUNITY), ("gate.access", "smoke.*"))
    assert (scope.districts, scope.streets, scope.communities) == (("371312",), (HEDONG,),
                                                                   (COMMUNITY,))
    assert scope.event_types() == ("gate.access", "smoke.alarm", "smoke.chattering",
                                   "smoke.fault", "smoke.reading")
    street_only = parse_scope([HEDONG], ["*"])
    assert street_only.matches_area("371312", HEDONG, "371312001009")
    assert not street_only.matches_area("371312", "371312002", "371312002001")
    assert street_only.event_types() is None and street_only.matches_type("water.leak")
    assert scope.matches_type("smoke.alarm") and not scope.matches_type("smoke")
    assert not scope.matches_type("gate.forced_open") and not scope.matches_type("smokex.alarm")


def test_all_areas_and_all_types_absorb_the_rest() -> None:
    scope = parse_scope(["all", HEDONG], ["*", "smoke.*"])
    assert scope == Scope(("",), ("*",)) and scope.all_areas and scope.all_types
    assert scope.matches_area("1", "2", "3") and scope.text() == "areas=all types=*"


@pytest.mark.parametrize(("areas", "types", "named"), [
    (["12345"], ["*"], "area '12345'"),
    (["3713120010011"], ["*"], "area '3713120010011'"),
    (["37131a"], ["*"], "area '37131a'"),
    (["371312' OR 1=1 --"], ["*"], "area"),
    ([HEDONG], ["smok.*"], "type 'smok.*' matches no event type"),
    ([HEDONG], ["gate.acces"], "type 'gate.acces' matches no event type"),
    ([HEDONG], ["smoke*"], "type 'smoke*'"),
    ([HEDONG], ["%"], "type '%'"),
    ([], ["*"], "no area"),
    ([HEDONG], [], "no event type"),
])
def test_a_bad_scope_is_refused_naming_the_part(areas: list[str], types: list[str],
                                                named: str) -> None:
    with pytest.raises(ConsumerError, match="hint") as err:
        parse_scope(areas, types)
    assert named in str(err.value)


def test_every_catalog_type_is_reachable_by_its_family_and_by_name() -> None:
    for t in CATALOG:
        assert parse_scope(["all"], [t.split(".")[0] + ".*"]).matches_type(t)
        assert parse_scope(["all"], [t]).event_types() == (t,)


def test_names_accept_any_script_and_refuse_invisible_characters() -> None:
    assert parse_name("消防-河东") == "消防-河东"
    assert parse_name("Cafe\u0301 nord") == "Café nord"  # NFC
    for bad in ("", " 公安", "公安 ", "a\x00b", "a\u202eb", "a\nb", "x" * 65):
        with pytest.raises(ConsumerError, match="name"):
            parse_name(bad)


def test_expiry_forms() -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    assert parse_expiry("90d", now) == now + timedelta(days=90)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2027-01-01", now) == datetime(2027, 1, 1, tzinfo=UTC)
    assert parse_expiry("never", now) is None and parse_expiry(None, now) is None
    for bad in ("90", "soon", "-1d", "2026-01-01"):
        with pytest.raises(ConsumerError, match="expiry"):
            parse_expiry(bad, now)


# ----------------------------------------------------------------------------- tokens, both stores


def test_add_authenticate_and_list_without_the_token(consumers: Consumers) -> None:
    scope = parse_scope([COMMUNITY], ["smoke.*"])
    made = consumers.add("消防-河东", scope)
    assert well_formed(made.token) and made.token.startswith("cdt_")
    assert consumers.authenticate(made.token) == Consumer("消防-河东", scope)
    second = consumers.new_token("消防-河东", expires_at=datetime.now(UTC) + timedelta(days=1))
    assert consumers.authenticate(second.token) == Consumer("消防-河东", scope)
    assert consumers.authenticate(made.token) is not None  # the first one stays valid
    [info] = consumers.list_consumers()
    assert info.name == "消防-河东" and info.scope == scope
    assert {t.id for t in info.tokens} == {made.id, second.id}
    shown = repr(consumers.list_consumers())
    for tok in (made.token, second.token):
        assert tok not in shown and digest(tok) not in shown and tok[4:] not in shown


def test_only_the_hash_is_stored(consumers: Consumers) -> None:
    made = consumers.add("公安", parse_scope(["all"], ["gate.*"]))
    rows = consumers.db.query("SELECT * FROM consumer_tokens")
    assert made.token not in repr(rows) and digest(made.token) in repr(rows)


def test_unknown_malformed_and_hostile_tokens_fail(consumers: Consumers) -> None:
    consumers.add("住建", parse_scope(["371312"], ["water.*"]))
    for bad in ("", "cdt_", "Bearer x", "cdt_" + "A" * 43, "cdt_' OR '1'='1",
                "cdt_" + "A" * 42 + "\x00", "x" * 10_000):
        assert consumers.authenticate(bad) is None


def test_a_revoked_token_fails_within_the_cache_delay(url: str, consumers: Consumers) -> None:
    """Revoked by another process (the CLI): refused here within `cache_s`."""
    made = consumers.add("民政", parse_scope([HEDONG], ["device.*"]))
    other = consumers.new_token("民政")
    assert consumers.authenticate(made.token) is not None  # now cached
    with open_consumers(url) as cli_side:
        assert cli_side.revoke("民政", made.id) == [made.id]
    revoked_at = time.monotonic()
    while consumers.authenticate(made.token) is not None:
        assert time.monotonic() - revoked_at < consumers.cache_s + 0.5
        time.sleep(0.02)
    assert time.monotonic() - revoked_at <= consumers.cache_s + 0.3  # + one loop, loaded box
    assert consumers.authenticate(other.token) is not None  # only that token
    assert consumers.revoke("民政") == [other.id]
    assert consumers.revoke("民政") == []
    time.sleep(consumers.cache_s)
    assert consumers.authenticate(other.token) is None


def test_an_expired_token_fails_at_once_even_cached(consumers: Consumers, clock: Clock) -> None:
    made = consumers.add("消防-河西", parse_scope(["371312002"], ["smoke.*"]),
                         expires_at=datetime.fromtimestamp(clock.now + 60, UTC))
    assert consumers.authenticate(made.token) is not None
    clock.now += 59.9
    assert consumers.authenticate(made.token) is not None
    clock.now += 0.2
    assert consumers.authenticate(made.token) is None
    [info] = consumers.list_consumers()
    assert info.tokens[0].state(datetime.fromtimestamp(clock.now, UTC)) == "expired"


def test_sqlite_authentication_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    """A collector holding the file's write lock (a group commit) delays the audit flush,
    never `authenticate`."""
    import sqlite3
    import threading

    url = f"sqlite:///{tmp_path / 'district.db'}"
    migrate_store(url)
    with Consumers(open_db(url), cache_s=0) as c:
        made = c.add("公安", parse_scope(["all"], ["gate.*"]))
        c.audit("公安", "/v1/events", parse_scope(["all"], ["gate.*"]), 1)
        collector = sqlite3.connect(tmp_path / "district.db", isolation_level=None)
        collector.execute("BEGIN IMMEDIATE")
        flusher = threading.Thread(target=c.flush)
        flusher.start()
        time.sleep(0.2)  # the flush now waits for the write lock
        started = time.monotonic()
        for _ in range(100):
            assert c.authenticate(made.token) is not None
        assert time.monotonic() - started < 1.0
        assert flusher.is_alive()
        collector.execute("COMMIT")
        flusher.join(10)
        collector.close()
        assert [r.events for r in c.audit_rows()] == [1]


def test_names_are_data_never_sql(consumers: Consumers) -> None:
    name = "x'); DROP TABLE consumers; --"
    made = consumers.add(name, parse_scope(["all"], ["*"]))
    assert consumers.authenticate(made.token) == Consumer(name, parse_scope(["all"], ["*"]))
    assert [i.name for i in consumers.list_consumers()] == [name]


def test_authenticate_from_many_threads(consumers: Consumers) -> None:
    from concurrent.futures import ThreadPoolExecutor

    tokens = [consumers.add(f"c{i}", parse_scope(["all"], ["*"])).token for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: consumers.authenticate(tokens[i % 8]), range(400)))
    assert [g.name if g else None for g in got] == [f"c{i % 8}" for i in range(400)]


def test_management_mistakes_are_named(consumers: Consumers) -> None:
    consumers.add("公安", parse_scope(["all"], ["*"]))
    with pytest.raises(ConsumerError, match="exists already"):
        consumers.add("公安", parse_scope(["all"], ["*"]))
    with pytest.raises(ConsumerError, match="no consumer '消防'"):
        consumers.new_token("消防")
    with pytest.raises(ConsumerError, match="no token 'tok_nope'"):
        consumers.revoke("公安", "tok_nope")


def test_reads_are_audited_and_the_last_use_recorded(consumers: Consumers,
                                                     clock: Clock) -> None:
    scope = parse_scope([COMMUNITY], ["smoke.*"])
    made = consumers.add("消防-河东", scope)
    assert consumers.authenticate(made.token) is not None
    consumers.audit("消防-河东", "/v1/events", scope, 12)
    consumers.audit("消防-河东", f"/v1/events?token={made.token}", scope, 0)
    rows = consumers.audit_rows()
    assert [(r.consumer, r.route, r.scope, r.events) for r in rows] == [
        ("消防-河东", "/v1/events?token=cdt_[redacted]", scope.text(), 0),
        ("消防-河东", "/v1/events", scope.text(), 12)]
    assert consumers.audit_rows(consumer="公安") == []
    since = datetime.fromtimestamp(clock.now + 1, UTC)
    assert consumers.audit_rows(since=since) == []
    [info] = consumers.list_consumers()
    assert info.tokens[0].last_used_at is not None


def test_audit_rows_older_than_the_retention_go(consumers: Consumers, clock: Clock) -> None:
    scope = parse_scope(["all"], ["*"])
    consumers.audit("a", "/v1/events", scope, 1)
    consumers.flush()
    clock.now += 91 * 86400
    consumers.audit("a", "/v1/events", scope, 2)
    consumers.flush()
    assert consumers.audit_log.expire() == 1
    assert [r.events for r in consumers.audit_rows()] == [2]


def test_no_token_in_any_log_line(consumers: Consumers) -> None:
    with structlog.testing.capture_logs() as logs:
        scope = parse_scope([COMMUNITY], ["smoke.*"])
        made = consumers.add("消防-河东", scope)
        again = consumers.new_token("消防-河东", datetime.now(UTC) + timedelta(seconds=1))
        consumers.authenticate(made.token)
        consumers.audit("消防-河东", f"/v1/events/stream?access_token={made.token}", scope, 3)
        consumers.revoke("消防-河东", made.id)
        time.sleep(consumers.cache_s)
        consumers.authenticate(made.token)
        consumers.flush()
    text = repr(logs)
    assert "consumer_read" in text and "consumer_tokens_revoked" in text
    for tok in (made.token, again.token):
        assert tok not in text and tok[4:] not in text and digest(tok) not in text


def test_every_read_is_in_the_audit_once_flushed_even_while_the_writer_runs(
        consumers: Consumers) -> None:
    """2,000 reads pass `batch_max`, so the writer thread takes batches meanwhile; after
    `flush` every row is there (the suite once saw 1,284 of 2,000: a flush returned while
    the thread's batch was still being written)."""
    scope = parse_scope(["all"], ["*"])
    for i in range(2000):
        consumers.audit("a", "/v1/events", scope, i)
    consumers.flush()
    assert sorted(r.events for r in consumers.audit_rows(limit=5000)) == list(range(2000))


# ----------------------------------------------------------------------------- the CLI


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, ["consumers", *args])


def test_cli_add_list_token_revoke_audit(url: str) -> None:
    added = invoke("add", "消防-河东", "--store", url, "--area", COMMUNITY, "--type", "smoke.*",
                   "--expires", "90d")
    assert added.exit_code == 0, added.output
    token = added.stdout.splitlines()[-1]
    assert well_formed(token) and "shown this once" in added.stderr
    more = invoke("token", "消防-河东", "--store", url)
    assert more.exit_code == 0, more.output
    token2 = more.stdout.splitlines()[-1]
    with open_consumers(url) as c:
        assert c.authenticate(token) is not None and c.authenticate(token2) is not None
        tid = c.list_consumers()[0].tokens[0].id
        c.audit("消防-河东", "/v1/events", parse_scope([COMMUNITY], ["smoke.*"]), 7)
    listed = invoke("list", "--store", url)
    assert listed.exit_code == 0 and "消防-河东" in listed.output and tid in listed.output
    assert f"areas={COMMUNITY} types=smoke.*" in listed.output
    assert token not in listed.output and token2 not in listed.output
    assert f"cdt_{token[4:8]}…" in listed.output and "active" in listed.output
    revoked = invoke("revoke", "消防-河东", "--store", url, "--token", tid)
    assert revoked.exit_code == 0 and tid in revoked.output and "within 2 s" in revoked.output
    assert "revoked" in invoke("list", "--store", url).output
    audit = invoke("audit", "--store", url, "--consumer", "消防-河东", "--since", "1h")
    assert audit.exit_code == 0 and "/v1/events" in audit.output and "7 events" in audit.output
    assert "cdt_" not in audit.output


@pytest.mark.parametrize(("args", "said"), [
    (["add", "x", "--area", "12345", "--type", "smoke.*"], "area '12345'"),
    (["add", "x", "--area", HEDONG, "--type", "smok.*"], "type 'smok.*' matches no event"),
    (["add", "x\x07", "--area", HEDONG, "--type", "smoke.*"], "name 'x\\x07'"),
    (["add", "x", "--area", HEDONG, "--type", "smoke.*", "--expires", "soon"], "--expires"),
    (["token", "nobody"], "no consumer 'nobody'"),
    (["revoke", "nobody"], "no consumer 'nobody'"),
    (["audit", "--since", "yesterday"], "--since 'yesterday'"),
])
def test_cli_mistakes_are_one_clear_line(url: str, args: list[str], said: str) -> None:
    result = invoke(*args[:1], "--store", url, *args[1:])
    assert result.exit_code == 2, result.output
    assert said in result.stderr and result.stderr.startswith("edge-collector: ")
    assert "hint" in result.stderr or "expected" in result.stderr
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_cli_on_a_missing_sqlite_store_says_how_to_make_it(tmp_path: Path) -> None:
    result = invoke("list", "--store", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.exit_code == 2 and "edge-collector migrate" in result.stderr


def test_the_real_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'district.db'}"
    script = Path(sys.executable).parent / "edge-collector"  # the installed console script
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "collector"]
    subprocess.run([*cmd, "migrate", "--store", url], check=True, capture_output=True)
    added = subprocess.run([*cmd, "consumers", "add", "消防-河东", "--store", url, "--area",
                            HEDONG, "--type", "smoke.*"], capture_output=True, text=True,
                           check=True)
    token = added.stdout.strip()
    assert well_formed(token)  # stdout is the token alone
    listed = subprocess.run([*cmd, "consumers", "list", "--store", url], capture_output=True,
                            text=True, check=True)
    assert "消防-河东" in listed.stdout and token not in listed.stdout + listed.stderr
    assert token not in added.stderr
    bad = subprocess.run([*cmd, "consumers", "add", "x", "--store", url, "--area", "1",
                          "--type", "smoke.*"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("edge-collector: area '1'")
    assert "Traceback" not in bad.stderr


# ----------------------------------------------------------------------------- PostgreSQL schema


def test_a_store_without_the_consumers_migration_is_refused_with_the_command(
        postgres: Any) -> None:
    import psycopg

    from collector.store import StoreError, open_store
    from collector.store.pg_migrate import migrate

    url = postgres.new_database()
    with psycopg.connect(url) as conn:
        migrate(conn, upto=2)
    with pytest.raises(ConsumerError, match="edge-collector migrate"):
        open_consumers(url)
    with pytest.raises(StoreError, match=r"missing .*0004_consumers\.sql.*edge-collector migrate"):
        open_store(url, create=False)
    assert "applied 0004_consumers.sql" in CliRunner().invoke(
        main, ["migrate", "--store", url]).output
    open_consumers(url).close()


def test_migrate_applies_a_lower_number_that_arrives_later(postgres: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Two features numbered side by side (0003 merged after 0004 was applied somewhere):
    the missing version is applied, not skipped for being below the highest."""
    import psycopg

    from collector.store import pg_migrate
    from collector.store.pg_migrate import Migration, migrate, missing_versions

    url = postgres.new_database()
    one = Migration(1, "0001_a.sql", "CREATE TABLE a (x int)")
    four = Migration(4, "0004_d.sql", "CREATE TABLE d (x int)")
    three = Migration(3, "0003_c.sql", "CREATE TABLE c (x int)")
    with psycopg.connect(url) as conn:
        monkeypatch.setattr(pg_migrate, "migrations", lambda: [one, four])
        assert migrate(conn) == ["0001_a.sql", "0004_d.sql"]
        monkeypatch.setattr(pg_migrate, "migrations", lambda: [one, three, four])
        assert missing_versions(conn) == ["0003_c.sql"]
        assert migrate(conn) == ["0003_c.sql"]
        assert migrate(conn) == [] and missing_versions(conn) == []
        assert conn.execute("SELECT to_regclass('c') IS NOT NULL").fetchone() == (True,)


def test_a_store_that_is_away_is_unavailable_not_unauthorised(tmp_path: Path) -> None:
    """The stream API answers 503 (StoreUnavailable), not 401, while PostgreSQL is down,
    and tokens work again once it is back."""
    import shutil
    import tempfile

    from collector.consumers import StoreUnavailable
    from tests.peers import Postgres

    workdir = Path(tempfile.mkdtemp(prefix="cd-pg-away-"))
    server = Postgres(workdir)
    server.start()
    try:
        url = server.new_database()
        migrate_store(url)
        with Consumers(open_db(url), cache_s=0) as c:
            made = c.add("消防-河东", parse_scope([HEDONG], ["smoke.*"]))
            assert c.authenticate(made.token) is not None
            server.stop()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="cannot be read"):
                c.authenticate(made.token)
            assert time.monotonic() - started < 8
            server.start()
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert c.authenticate(made.token) is not None
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
