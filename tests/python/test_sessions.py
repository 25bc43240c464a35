"""Objects kept for a session, against a real worker process (protocol/SPEC.md §8.9):
refs written in results, read back in the same session only, dropped when the BEAM
says so, all gone when the session ends; a malformed session option is the call's
error. The Elixir side (Bridge.session/3) is elixir/test/bridge_session_test.exs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from beambridge import Atom
from beambridge.worker import EXIT_PROTOCOL
from worker_harness import BAD_CALL, WorkerProcess, running

REF = Atom("$bb_ref")


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    with running() as w:
        yield w


def session(n: Any) -> dict[bytes, Any]:
    return {b"session": n}


def error_reason(answer: tuple[str, Any]) -> Any:
    status, error = answer
    assert status == "error", answer
    assert error[0] == BAD_CALL, error
    return error[1]


def test_a_kept_object_comes_back_in_its_session_only(worker: WorkerProcess) -> None:
    [ref, plain] = worker.ok("keep_it", 41, opts=session(5))
    assert plain == 41 and ref[0] == REF and ref[1] == 5 and type(ref[2]) is int
    assert worker.ok("kept_value", ref, opts=session(5)) == 41
    # the same ref in another session, or in no session: refused, nothing read
    assert error_reason(worker.call("kept_value", ref, opts=session(6))) == "no_session"
    assert error_reason(worker.call("kept_value", ref)) == "no_session"
    assert worker.ok("kept_value", ref, opts=session(5)) == 41


def test_dropped_refs_and_ended_sessions_name_nothing(worker: WorkerProcess) -> None:
    [a, _] = worker.ok("keep_it", b"a", opts=session(7))
    [b, _] = worker.ok("keep_it", b"b", opts=session(7))
    worker.send((Atom("refs_dropped"), 7, [a[2]]))
    assert error_reason(worker.call("kept_value", a, opts=session(7))) == "released_ref"
    assert worker.ok("kept_value", b, opts=session(7)) == b"b"
    worker.send((Atom("session_end"), 7))
    assert error_reason(worker.call("kept_value", b, opts=session(7))) == "released_ref"


def test_keep_outside_a_session_fails_the_call_with_what_to_do(worker: WorkerProcess) -> None:
    status, (kind, reason, message) = worker.call("keep_it", 1)
    assert (status, kind, reason) == ("error", BAD_CALL, "no_session")
    assert b"Bridge.session" in message
    assert worker.call("add", 1, 2) == ("ok", 3)


@pytest.mark.parametrize("bad", [0, -1, b"one", [1]])
def test_a_malformed_session_option_is_the_calls_error(worker: WorkerProcess, bad: Any) -> None:
    assert error_reason(worker.call("add", 1, 2, opts=session(bad))) == "bad_term"
    assert worker.call("add", 1, 2, opts=session(3)) == ("ok", 3)


@pytest.mark.parametrize(
    "envelope",
    [(Atom("refs_dropped"), 1, [-1]), (Atom("session_end"), 0, 1), (Atom("callback_ok"), 1, [])],
    ids=["negative_ref", "session_end_arity", "callback_ok_without_body"],
)
def test_malformed_session_messages_are_protocol_violations(envelope: Any) -> None:
    w = WorkerProcess().start()
    w.send(envelope)
    assert w.wait() == EXIT_PROTOCOL
    w.cleanup()
