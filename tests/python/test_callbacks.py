"""The worker's side of callbacks and sessions that does not need a BEAM (protocol/SPEC.md
§8.8, §8.9): the BEAM's messages read or refused, pids carried through unchanged, kept
objects refused outside a session, `beambridge.elixir` refused outside a handler. The
round trips themselves run against real workers in elixir/test/bridge_callbacks_test.exs."""

from __future__ import annotations

from typing import Any

import pytest
from beambridge import callback_control as cc
from beambridge import control, elixir
from beambridge.calls import CallPath
from beambridge.errors import BridgeError
from beambridge.etf import Atom, decode, encode
from beambridge.kept import Kept, RefStore
from beambridge.pid import Pid
from beambridge.terms import TAG_PID
from hypothesis import given, settings
from hypothesis import strategies as st

terms = st.recursive(
    st.none()
    | st.integers(-(2**70), 2**70)
    | st.binary(max_size=8)
    | st.booleans()
    | st.sampled_from(
        [
            Atom("callback_ok"),
            Atom("callback_error"),
            Atom("refs_dropped"),
            Atom("session_end"),
            Atom("raised"),
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.tuples(inner, inner, inner)
        | st.tuples(inner, inner, inner, inner, inner)
    ),
    max_leaves=12,
)


@settings(max_examples=400)
@given(envelope=terms, has_body=st.booleans())
def test_any_envelope_is_a_message_or_refused(envelope: Any, has_body: bool) -> None:
    """Whatever the envelope, `parse` returns a well-formed message or None, and the
    control channel's reader raises ProtocolError for what nothing accepts."""
    message = cc.parse(envelope, has_body)
    if isinstance(message, cc.CallbackReply):
        assert type(message.cid) is int and message.cid >= 0
        assert message.ok == has_body
    try:
        control.from_beam(envelope, has_body)
    except control.ProtocolError:
        assert message is None


def test_the_messages_both_ways() -> None:
    assert cc.parse((Atom("callback_ok"), 5, [(1, 2, 3, 4)]), True) == cc.CallbackReply(
        5, True, [(1, 2, 3, 4)]
    )
    assert cc.parse((Atom("refs_dropped"), 2, [1, 2]), False) == cc.RefsDropped(2, [1, 2])
    assert cc.parse((Atom("refs_dropped"), 2, [-1]), False) is None
    assert cc.parse((Atom("callback_error"), 5, "not_allowed", b"", b"x"), False) is None
    sent = cc.callback(9, 1, b"MyApp.Repo", b"get", 1, [])
    assert decode(encode(sent)) == sent


@given(etf=st.binary(min_size=1, max_size=64), mac=st.binary(min_size=32, max_size=32))
def test_a_pid_goes_back_exactly_as_it_came(etf: bytes, mac: bytes) -> None:
    path = CallPath()
    try:
        [pid] = path.read_value([(TAG_PID, etf, mac)], [])
        assert pid == Pid(etf, mac)
        parts, _ = path.encode_value([pid, {"p": pid}])  # type: ignore[misc]
        assert decode(b"".join(parts)) == [
            (TAG_PID, etf, mac),
            {b"p": (TAG_PID, etf, mac)},
        ]
    finally:
        path.close()


def test_keep_outside_a_session_is_refused_with_what_to_do() -> None:
    path = CallPath()
    try:
        bad = path.encode_value(Kept(object()))
        assert getattr(bad, "reason", None) == "no_session"
        assert "Bridge.session" in bad.message  # type: ignore[union-attr]
    finally:
        path.close()


def test_a_ref_of_a_session_is_its_object_until_dropped() -> None:
    store = RefStore()
    model = {"weights": [1, 2]}
    ref = store.put(3, model)
    assert store.get(3, ref) is model
    with pytest.raises(BridgeError) as err:
        store.get(4, ref)  # another session's ref names nothing here
    assert err.value.reason == "released_ref"
    store.end(3)
    assert store.count() == 0


def test_elixir_outside_a_worker_says_so() -> None:
    with pytest.raises(elixir.ElixirError) as err:
        elixir.send("anyone", 1)
    assert err.value.reason == "no_call"
