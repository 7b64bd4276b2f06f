"""eliot logging (SPEC §6): record shape, formats, levels, redaction, the file, Twisted's log."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import time

import eliot
import pytest
from eliot import start_action
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from zope.interface.verify import verifyObject

from buntime.http import Headers
from buntime.logs import REDACTED, level_enabled, log, redact_headers
from buntime.logs.destinations import STREAM_BUFFER, FileDestination, StreamDestination
from buntime.logs.render import format_json, format_pretty, to_record
from buntime.logs.service import LoggingService, TwistdLog, TwistedToEliot


class Collected:
    """An eliot destination keeping the messages of one test."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    def __call__(self, message: dict) -> None:
        self.messages.append(dict(message))

    def of_type(self, message_type: str) -> list[dict]:
        return [m for m in self.messages if m.get("message_type") == message_type]


@pytest.fixture
def collected():
    destination = Collected()
    eliot.add_destinations(destination)
    yield destination
    eliot.remove_destination(destination)


def lines_of(stream: io.StringIO, message_type: str | None = None) -> list[dict]:
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    if message_type is None:
        return records
    return [r for r in records if r.get("message_type") == message_type]


# -- the JSON record ---------------------------------------------------------------


def test_json_record_shape(collected):
    log("warn", "buntime:test:shape", "Something happened", count=3, context="plugin:keyval")
    [message] = collected.of_type("buntime:test:shape")
    record = json.loads(format_json(message))
    assert record["level"] == "warn"
    assert record["message"] == "Something happened"
    assert abs(record["timestamp"] - time.time()) < 60  # epoch seconds, as eliot writes them
    assert record["context"] == "plugin:keyval"
    assert record["count"] == 3
    assert record["message_type"] == "buntime:test:shape"
    assert record["task_level"] == [1]
    assert isinstance(record["task_uuid"], str)
    assert list(record)[:4] == ["level", "message", "timestamp", "context"]
    assert "\n" not in format_json(message)


def test_context_defaults_to_runtime_and_timestamp_is_eliot_s():
    record = to_record({"message_type": "x", "timestamp": 1.5, "level": "info", "message": "m"})
    assert record["context"] == "runtime"
    assert record["timestamp"] == 1.5


def test_records_of_actions_and_odd_messages():
    started = to_record({"action_type": "buntime:test:act", "action_status": "started"})
    assert (started["level"], started["message"]) == ("debug", "buntime:test:act started")
    failed = to_record(
        {"action_type": "a", "action_status": "failed", "exception": "builtins.ValueError"}
    )
    assert failed["level"] == "error"
    traceback = to_record({"message_type": "eliot:traceback", "exception": "E", "reason": "r"})
    assert traceback["message"] == "E: r"
    assert to_record({"message_type": "only:type"})["message"] == "only:type"
    assert to_record({"level": "loud", "message": "m"})["level"] == "debug"


def test_unserializable_fields_do_not_break_json():
    line = format_json({"message_type": "x", "level": "info", "message": "m", "obj": object()})
    assert json.loads(line)["obj"].startswith("<object object")


def test_an_action_logs_its_fields(collected):
    with start_action(action_type="buntime:test:action", level="info", message="go") as action:
        action.add_success_fields(status=200)
    start, end = [m for m in collected.messages if m.get("action_type") == "buntime:test:action"]
    assert to_record(start)["message"] == "go"
    assert to_record(end)["status"] == 200
    assert to_record(end)["action_status"] == "succeeded"


# -- pretty ---------------------------------------------------------------------------

PRETTY = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} INF \[plugin:keyval\] Request processed \{.*\}$")


def test_pretty_format(collected):
    log("info", "buntime:test:pretty", "Request processed", duration=45, context="plugin:keyval")
    [message] = collected.of_type("buntime:test:pretty")
    line = format_pretty(message)
    assert PRETTY.match(line), line
    assert line.endswith('Request processed {"duration": 45}')
    assert "task_uuid" not in line and "message_type" not in line


def test_pretty_prints_non_ascii_as_is():
    message = {
        "timestamp": 0.0,
        "level": "info",
        "message": "Café ☕",
        "context": "runtime",
        "path": "/café/日本",
    }
    assert format_pretty(message).endswith('Café ☕ {"path": "/café/日本"}')


def test_pretty_without_fields_and_levels():
    base = {"timestamp": 0.0, "message": "hi", "message_type": "t", "task_uuid": "u"}
    for level, tag in [("debug", "DBG"), ("info", "INF"), ("warn", "WRN"), ("error", "ERR")]:
        line = format_pretty({**base, "level": level})
        assert line.endswith(f" {tag} [runtime] hi"), line


def test_pretty_colour():
    message = {"timestamp": 0.0, "level": "error", "message": "bad", "context": "runtime"}
    plain = format_pretty(message, colour=False)
    coloured = format_pretty(message, colour=True)
    assert "\x1b[" not in plain
    assert "\x1b[31mERR\x1b[0m" in coloured
    assert re.sub(r"\x1b\[\d+m", "", coloured) == plain


# -- levels -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minimum", "passing"),
    [
        ("debug", ["debug", "info", "warn", "error"]),
        ("info", ["info", "warn", "error"]),
        ("warn", ["warn", "error"]),
        ("error", ["error"]),
    ],
)
def test_level_filtering(minimum, passing):
    stream = io.StringIO()
    destination = StreamDestination(stream, min_level=minimum, fmt="json")
    for level in ("debug", "info", "warn", "error"):
        destination({"message_type": "t", "level": level, "message": level})
        assert level_enabled(minimum, level) is (level in passing)
    assert [r["message"] for r in lines_of(stream)] == passing


def test_stream_destination_pretty_and_broken_stream():
    stream = io.StringIO()
    StreamDestination(stream, "debug", "pretty")({"level": "info", "message": "hello"})
    assert stream.getvalue().endswith("INF [runtime] hello\n")
    stream.close()
    StreamDestination(stream, "debug", "json")({"level": "info", "message": "lost"})  # no raise


# -- secrets -----------------------------------------------------------------------------

SECRETS = {"Authorization": "Bearer s3cr3t", "cookie": "session=c00kie", "X-Api-Key": "k3y"}


def assert_no_secret(text: str) -> None:
    for secret in ("s3cr3t", "c00kie", "k3y"):
        assert secret not in text, text


def test_header_dicts_are_redacted_in_every_format():
    message = {
        "message_type": "t",
        "level": "info",
        "message": "m",
        "headers": {**SECRETS, "accept": "text/html"},
        "nested": {"request": {"headers": {"Set-Cookie": "id=c00kie"}}},
    }
    for line in (format_json(message), format_pretty(message)):
        assert_no_secret(line)
    record = to_record(message)
    assert record["headers"]["Authorization"] == REDACTED
    assert record["headers"]["accept"] == "text/html"


def test_header_pairs_and_headers_values_are_redacted():
    message = {
        "message_type": "t",
        "level": "info",
        "message": "m",
        "pairs": list(SECRETS.items()),
        "headers": Headers(SECRETS).add("accept", "*/*"),
    }
    line = format_json(message)
    assert_no_secret(line)
    assert "*/*" in line


def test_fields_named_as_credentials_are_redacted():
    """
    A message's own field named as a credential (as a plugin's
    C{ctx.logger.info("login", authorization=...)} makes) is no more
    written than the same header in a dict.
    """
    message = {
        "message_type": "t",
        "level": "info",
        "message": "m",
        "authorization": "Bearer s3cr3t",
        "Cookie": "id=c00kie",
        "x_api_key": "k3y",
        "nested": {"proxy_authorization": "Basic s3cr3t"},
        "method": "GET",
    }
    for line in (format_json(message), format_pretty(message)):
        assert_no_secret(line)
    record = to_record(message)
    assert (record["authorization"], record["Cookie"], record["x_api_key"]) == (REDACTED,) * 3
    assert record["method"] == "GET"
    assert list(record)[5:] == ["authorization", "Cookie", "x_api_key", "nested", "method"]


def test_fields_named_as_credentials_are_redacted_in_any_case():
    """
    A credential's name in any mix of cases is a credential's field, on the
    first line that names it and on the next (when known field names are
    remembered).
    """
    for _ in range(2):
        message = {
            "message_type": "t",
            "level": "info",
            "message": "m",
            "aUTHORIZATION": "Bearer s3cr3t",
            "cOoKiE": "id=c00kie",
            "X_API_Key": "k3y",
            "X-aPI-kEY": "k3y",
            "method": "GET",
        }
        for line in (format_json(message), format_pretty(message)):
            assert_no_secret(line)
        record = to_record(message)
        assert [record[k] for k in list(message)[3:7]] == [REDACTED] * 4
        assert record["method"] == "GET"


def test_redact_headers():
    assert redact_headers([("Cookie", "a=b"), ("accept", "x")]) == [
        ("Cookie", REDACTED),
        ("accept", "x"),
    ]


# -- the service and the file ---------------------------------------------------------------


def test_logging_service_adds_and_removes_destinations():
    stream = io.StringIO()
    service = LoggingService(clock=Clock(), level="info", fmt="json", stream=stream)
    service.startService()
    log("info", "buntime:test:service", "while running")
    log("debug", "buntime:test:service", "too detailed")
    service.stopService()
    log("info", "buntime:test:service", "after stop")
    assert [r["message"] for r in lines_of(stream, "buntime:test:service")] == ["while running"]


@pytest.mark.parametrize(("tty", "coloured"), [(True, True), (False, False)])
def test_pretty_is_coloured_only_on_a_tty(tty, coloured):
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    stream = Stream()
    service = LoggingService(clock=Clock(), level="info", fmt="pretty", stream=stream)
    service.startService()
    try:
        log("info", "buntime:test:colour", "colour?")
    finally:
        service.stopService()
    [line] = [line for line in stream.getvalue().splitlines() if "colour?" in line]
    assert ("\x1b[" in line) is coloured


def test_file_destination_is_flushed_every_second_and_on_stop(tmp_path):
    path = tmp_path / "buntime.log"
    clock = Clock()
    stream = io.StringIO()
    service = LoggingService(
        clock=clock, level="info", fmt="pretty", file_path=str(path), stream=stream
    )
    service.startService()

    def file_messages() -> list[str]:
        if not path.exists():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [r["message"] for r in records if r.get("message_type") == "buntime:test:file"]

    log("info", "buntime:test:file", "first")
    log("debug", "buntime:test:file", "filtered out")
    assert file_messages() == []
    clock.advance(0.9)
    assert file_messages() == []
    clock.advance(0.1)
    assert file_messages() == ["first"]
    log("error", "buntime:test:file", "second")
    assert file_messages() == ["first"]
    service.stopService()
    assert file_messages() == ["first", "second"]
    assert not clock.getDelayedCalls()
    log("info", "buntime:test:file", "after stop")
    clock.advance(5)
    assert file_messages() == ["first", "second"]
    # the file holds JSON even when the terminal gets pretty lines
    assert "first" in stream.getvalue() and not stream.getvalue().startswith("{")


def test_file_destination_flushes_a_full_buffer_at_once(tmp_path):
    path = tmp_path / "busy.log"
    destination = FileDestination(str(path), "info")
    for number in range(511):
        destination({"level": "info", "message": str(number)})
    assert not path.exists()
    destination({"level": "info", "message": "511"})
    assert len(path.read_text().splitlines()) == 512
    destination.close()


def test_file_destination_appends(tmp_path):
    path = tmp_path / "append.log"
    path.write_text('{"old": true}\n')
    destination = FileDestination(str(path))
    destination({"level": "warn", "message": "new"})
    destination.close()
    assert [json.loads(line).get("message") for line in path.read_text().splitlines()] == [
        None,
        "new",
    ]


# -- twisted.logger into eliot ------------------------------------------------------------------


def test_twisted_events_become_eliot_messages(eliot_logger):
    logger = Logger(namespace="buntime.test", observer=TwistedToEliot())
    logger.info("hello {who}", who="world")
    logger.warn("careful")
    logger.debug("details")
    logger.critical("fire")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.failure("it broke")
    messages = [m for m in eliot_logger.messages if m.get("message_type") == "twisted:log"]
    assert [(m["level"], m["message"]) for m in messages] == [
        ("info", "hello world"),
        ("warn", "careful"),
        ("debug", "details"),
        ("error", "fire"),
        ("error", "it broke"),
    ]
    assert {m["context"] for m in messages} == {"twisted"}
    assert {m["namespace"] for m in messages} == {"buntime.test"}
    assert "ZeroDivisionError" in messages[-1]["traceback"]


def test_a_twisted_failure_without_a_message_says_its_error(eliot_logger):
    """twisted.web logs a failed request as C{log.failure("", ...)}: the line names the error."""
    logger = Logger(namespace="twisted.web.server.Request", observer=TwistedToEliot())
    try:
        raise KeyError("gone")
    except KeyError:
        logger.failure("")
    [message] = eliot_logger.messages
    assert (message["level"], message["message"]) == ("error", "KeyError: 'gone'")
    assert "KeyError" in message["traceback"]


def test_legacy_twisted_errors_are_errors(eliot_logger):
    observer = TwistedToEliot()
    observer({"log_format": "old style", "isError": 1, "log_namespace": "legacy"})
    [message] = eliot_logger.messages
    assert (message["level"], message["message"]) == ("error", "old style")


def test_twistd_log_writes_nothing_and_keeps_early_events_for_the_service():
    twistd_log = TwistdLog()
    assert verifyObject(ILogObserver, twistd_log)
    Logger(namespace="twistd", observer=twistd_log).info("starting up")
    seen: list[dict] = []
    twistd_log.replay_to(seen.append)
    assert [e["log_format"] for e in seen] == ["starting up"]
    Logger(namespace="twistd", observer=twistd_log).info("later")
    twistd_log.replay_to(seen.append)  # nothing kept after the replay
    assert len(seen) == 1


def test_the_service_forwards_twisted_s_log_into_its_destinations_while_it_runs():
    """Twisted's events, early ones first, are written once, in buntime's format."""
    stream = io.StringIO()
    service = LoggingService(clock=Clock(), level="info", fmt="json", stream=stream)
    Logger(namespace="twistd", observer=service.twistd_log).info("twistd starting up")
    service.startService()
    try:
        Logger(namespace="buntime.test", observer=globalLogPublisher).info("while running")
    finally:
        service.stopService()
    Logger(namespace="buntime.test", observer=globalLogPublisher).info("after the stop")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["message_type"], r["message"]) for r in records] == [
        ("twisted:log", "twistd starting up"),
        ("twisted:log", "while running"),
    ]


def test_the_console_is_looked_up_when_the_service_starts(monkeypatch) -> None:
    """A daemonizing twistd swaps sys.stdout before services start: log there."""
    import io
    import sys

    service = LoggingService(clock=Clock(), level="info", fmt="json")
    later = io.StringIO()
    monkeypatch.setattr(sys, "stdout", later)
    service.startService()
    try:
        log("info", "buntime:test:daemon", "after the swap")
    finally:
        service.stopService()
    assert "after the swap" in later.getvalue()


def test_a_log_file_that_fails_later_does_not_break_logging(tmp_path, capsys) -> None:
    target = tmp_path / "logs" / "buntime.log"
    destination = FileDestination(str(target))
    destination({"level": "info", "message": "lost", "timestamp": 0.0})
    destination.flush()  # the directory does not exist: no exception
    destination({"level": "info", "message": "lost again", "timestamp": 0.0})
    destination.flush()
    assert capsys.readouterr().err.count("cannot write the log file") == 1


def test_stream_destination_writes_the_lines_of_a_reactor_turn_at_once():
    class Stream(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            Stream.writes += 1
            return super().write(text)

    clock = Clock()
    stream = Stream()
    destination = StreamDestination(stream, "info", "json", flush_each=False, clock=clock)
    destination({"level": "info", "message": "one"})
    destination({"level": "debug", "message": "filtered"})
    destination({"level": "info", "message": "two"})
    assert stream.getvalue() == ""
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert [r["message"] for r in lines_of(stream)] == ["one", "two"]
    assert Stream.writes == 1
    assert not clock.getDelayedCalls()
    destination({"level": "info", "message": "three"})
    destination({"level": "error", "message": "four"})  # at once, with what waits
    assert [r["message"] for r in lines_of(stream)] == ["one", "two", "three", "four"]
    assert not clock.getDelayedCalls()


def test_stream_destination_writes_a_full_buffer_at_once():
    stream = io.StringIO()
    destination = StreamDestination(stream, "info", "json", flush_each=False)
    for number in range(STREAM_BUFFER - 1):
        destination({"level": "info", "message": str(number)})
    assert stream.getvalue() == ""
    destination({"level": "info", "message": "last"})
    assert len(stream.getvalue().splitlines()) == STREAM_BUFFER
    destination.flush()
    assert len(stream.getvalue().splitlines()) == STREAM_BUFFER


def test_new_ids_are_uuid4_text_and_differ():
    import uuid

    from buntime.logs import new_id

    ids = [new_id() for _ in range(600)]  # more than one draw of randomness
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_a_forked_child_draws_new_ids():
    import os

    from buntime.logs import new_id

    new_id()  # randomness drawn before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id must not be the parent's next one
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child != new_id()


def test_request_actions_log_their_start_only_when_debug_is_taken(eliot_logger):
    """Unless a JSON log takes it (see test_json_logs_hold_every_action_whole)."""
    import buntime.logs.requests as logging_module
    from buntime.logs.requests import REQUEST_ACTION, request_action

    service = LoggingService(clock=Clock(), level="info", fmt="pretty", stream=io.StringIO())
    service.startService()
    try:
        action = request_action("r-1", "GET", "/x")
        action.finish()
    finally:
        service.stopService()
    assert logging_module._start_messages  # back to eliot's usual once stopped
    quiet = [m for m in eliot_logger.messages if m.get("action_type") == REQUEST_ACTION]
    assert [m["action_status"] for m in quiet] == ["succeeded"]
    eliot_logger.reset()
    action = request_action("r-2", "GET", "/y")
    action.finish()
    loud = [m for m in eliot_logger.messages if m.get("action_type") == REQUEST_ACTION]
    assert [m["action_status"] for m in loud] == ["started", "succeeded"]
    assert loud[0]["message"] == "GET /y" and loud[0]["level"] == "debug"


def _as_json(value: object) -> object:
    """C{value} as a JSON line holds it: non-finite floats as null, other odd values as repr."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_json(v) for v in value]
    if value is None or isinstance(value, str | int | float):
        return value
    return repr(value)


def test_json_lines_hold_the_record_with_credentials_replaced():
    from buntime.logs.render import format_json, to_record

    message = {
        "timestamp": 1.5,
        "task_level": [2, 1],
        "level": "info",
        "message": 'say "hi" \u00e9 \n',
        "n": float("nan"),
        "odd": object,
        "headers": {"Authorization": "secret", "x": [1, 2]},
    }
    line = format_json(message)
    assert "\n" not in line
    assert json.loads(line) == _as_json(to_record(message))
    assert json.loads(line)["headers"] == {"Authorization": "[redacted]", "x": [1, 2]}
    assert "secret" not in line


def test_a_line_s_own_fields_are_never_raw_values():
    from buntime.logs.render import format_json

    record = json.loads(
        format_json({"message": ["a"], "message_type": "x", "level": object(), "timestamp": 1.0})
    )
    assert (record["message"], record["level"]) == ("x", "debug")


def test_a_line_written_by_the_fallback_has_null_for_nan():
    from buntime.logs.render import format_json

    line = format_json({"level": "info", "message": "m", "n": float("nan"), "big": 2**70})
    assert json.loads(line)["n"] is None and json.loads(line)["big"] == 2**70


def test_a_line_with_a_lone_surrogate_is_still_written():
    from buntime.logs.render import format_json

    line = format_json({"level": "info", "message": "bad \ud800 text", "timestamp": 1.0})
    assert json.loads(line)["message"] == "bad \ud800 text"


_plain_values = st.one_of(
    st.text(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.booleans(),
    st.none(),
    st.floats(),  # nan and the infinities too
    st.lists(st.integers(min_value=0, max_value=2**31), max_size=3),
    st.dictionaries(st.sampled_from(["Cookie", "x"]), st.text(max_size=5), max_size=2),
)


@given(
    st.dictionaries(
        st.one_of(
            st.sampled_from(["level", "message", "context", "task_level", "status"]),
            st.text(max_size=8).filter(lambda key: key != "timestamp"),
        ),
        _plain_values,
        max_size=8,
    ),
    st.sampled_from(["info", "warn", "error", "debug", "loud"]),
    st.floats(min_value=0, max_value=4e9),
)
def test_json_lines_are_the_record_of_any_message(message, level, when):
    from buntime.logs.render import format_json, to_record

    message = {"level": level, "timestamp": when, **message}
    line = format_json(message)
    assert "\n" not in line
    assert json.loads(line) == _as_json(to_record(message))
    assert list(json.loads(line))[:4] == ["level", "message", "timestamp", "context"]


def test_a_request_line():
    from buntime.logs.render import format_json

    message = {
        "level": "info",
        "message": 'GET /a%s/"x" 200 0.5ms',
        "request_id": "r\u00e9",
        "status": 200,
        "duration_ms": 0.5,
        "aborted": False,
        "action_status": "succeeded",
        "timestamp": 1.25,
        "task_uuid": "u",
        "action_type": "buntime:http:request",
        "task_level": [2, 1],
    }
    record = json.loads(format_json(message))
    assert record["message"] == 'GET /a%s/"x" 200 0.5ms' and record["request_id"] == "r\u00e9"
    assert record["timestamp"] == 1.25 and record["task_level"] == [2, 1]
    assert list(record)[:4] == ["level", "message", "timestamp", "context"]


def test_finishing_a_request_logs_what_eliot_would():
    from buntime.logs.requests import finish_request, request_action

    seen: list[dict] = []
    eliot.add_destinations(seen.append)
    try:
        ours = request_action("rid", "GET", "/a")
        finish_request(ours, {"level": "info", "message": "GET /a 200", "status": 200})
        finish_request(ours, {"level": "info"})  # once only
        theirs = request_action("rid", "GET", "/a")
        theirs.add_success_fields(level="info", message="GET /a 200", status=200)
        theirs.finish()
    finally:
        eliot.remove_destination(seen.append)
    finished = [dict(to_record(m)) for m in seen if m.get("action_status") == "succeeded"]
    assert len(finished) == 2
    for record in finished:
        record.pop("timestamp")
        record.pop("task_uuid")
    assert finished[0] == finished[1]  # the same line in the log
    assert finished[0]["task_level"] == [2] and finished[0]["status"] == 200


def test_a_finished_request_reaches_a_swapped_in_logger(eliot_logger):
    from buntime.logs.requests import finish_request, request_action

    finish_request(request_action("rid", "GET", "/a"), {"level": "info", "message": "m"})
    [message] = [m for m in eliot_logger.messages if m.get("action_status") == "succeeded"]
    assert message["message"] == "m" and message["action_type"] == "buntime:http:request"


def test_lines_are_written_at_the_end_of_the_turn_as_they_were_when_logged():
    clock = Clock()
    stream = io.StringIO()
    destination = StreamDestination(stream, flush_each=False, clock=clock)
    plain = {"level": "info", "message": "one", "timestamp": 1.0, "n": float("nan")}
    holding = {"level": "info", "message": "two", "timestamp": 2.0, "items": ["a"]}
    destination(plain)
    destination(holding)
    holding["items"].append("changed later")  # already written out as it was
    assert stream.getvalue() == ""
    clock.advance(0)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "one" and first["n"] is None  # NaN: JSON has no such number
    assert second["items"] == ["a"]


@pytest.mark.parametrize("fmt", ["json", "pretty"])
def test_json_logs_hold_every_action_whole(fmt):
    """At info, a JSON log has a request's start too, so eliot-tree renders it; pretty does not."""
    from buntime.logs.requests import request_action

    stream = io.StringIO()
    service = LoggingService(clock=Clock(), level="info", fmt=fmt, stream=stream)
    service.startService()
    try:
        request_action("r-1", "GET", "/x").finish()
        log("debug", "buntime:test:chatter", "not at info")
    finally:
        service.stopService()
    text = stream.getvalue()
    assert "not at info" not in text
    if fmt == "pretty":
        assert "GET /x" not in text
        return
    records = [json.loads(line) for line in text.splitlines()]
    assert [r.get("action_status") for r in records] == ["started", "succeeded"]


def test_the_eliot_internals_request_actions_use_are_there():
    """
    buntime.logs.requests makes and finishes request actions through eliot's
    internals (see its docstring); this fails loudly when an eliot release
    changes them, before anything subtler breaks.
    """
    import inspect

    from eliot._action import Action, TaskLevel

    parameters = list(inspect.signature(Action.__init__).parameters)
    assert parameters[:5] == ["self", "logger", "task_uuid", "task_level", "action_type"]
    for name in ("_start", "_nextTaskLevel", "serialize_task_id"):
        assert callable(getattr(Action, name)), name
    action = Action(None, "uuid", TaskLevel(level=[]), "buntime:test")
    for name in ("_finished", "_identification", "_logger"):
        assert hasattr(action, name), name
    assert hasattr(eliot.Logger, "_destinations") or hasattr(eliot.Logger(), "_destinations")
    assert callable(eliot.Logger._destinations.send)


def test_a_request_record_is_written_as_the_generic_formatter_would():
    """L{Record}s skip L{to_record}: the line must be the one it would make of the same fields."""
    from buntime.logs import Record
    from buntime.logs.requests import request_record

    record = request_record("info", "GET /a 200 0.5ms")
    record.update(request_id="r", status=200, aborted=False, app="a@1.0.0")
    record.update(action_status="succeeded", task_uuid="u", task_level=[2])
    plain = {k: v for k, v in record.items() if k != "context"}
    assert to_record(record) is record and type(record) is Record
    stream = io.StringIO()
    destination = StreamDestination(stream, min_level="error")  # actions pass any level
    destination(record)
    destination(plain)
    ours, generic = stream.getvalue().splitlines()
    assert ours == generic
    assert list(json.loads(ours))[:4] == ["level", "message", "timestamp", "context"]


def test_a_full_disk_leaves_no_half_line_in_the_log_file(tmp_path, capsys, monkeypatch) -> None:
    target = tmp_path / "buntime.log"
    destination = FileDestination(str(target))
    destination({"level": "info", "message": "before", "timestamp": 0.0})
    destination.flush()
    real_write = os.write
    full = [True]

    def write(descriptor: int, data: bytes) -> int:
        if full[0]:
            if len(data) > 10:  # the file system takes a part, then is full
                return real_write(descriptor, data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(descriptor, data)

    monkeypatch.setattr(os, "write", write)
    destination({"level": "info", "message": "lost", "timestamp": 0.0})
    destination.flush()
    full[0] = False
    destination({"level": "info", "message": "after", "timestamp": 0.0})
    destination.close()
    lines = target.read_text().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["before", "after"]
    err = capsys.readouterr().err
    assert "No space left on device" in err and "writing the log file" in err
