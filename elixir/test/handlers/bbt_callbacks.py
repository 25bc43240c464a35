"""Handlers of bridge_callbacks_test.exs: Python calling back into Elixir."""

import hashlib

import beambridge
import beambridge.elixir as elixir

FNS = "Bridge.CallbacksTest.Fns"


def call(function, args):
    """Calls Fns.function(*args) and returns what it returned."""
    return elixir.call(FNS, function, args)


def call_module(module, function, args):
    return elixir.call(module, function, args)


def outcome(module, function, args):
    """What calling module.function(*args) gives: ["ok", value] or the error's parts."""
    try:
        return ["ok", elixir.call(module, function, args)]
    except elixir.CallbackRefused as err:
        return ["refused", err.reason, err.message]
    except elixir.ElixirError as err:
        return ["error", err.reason, err.elixir_type, err.message]


def big_both_ways(size):
    """Sends `size` bytes to Elixir, which answers with `size` bytes of its own."""
    data = bytes(range(256)) * (size // 256)
    back = elixir.call(FNS, "big", [data])
    return [hashlib.sha256(data).hexdigest(), len(back), hashlib.sha256(back).hexdigest()]


def send_to(dest, message):
    try:
        elixir.send(dest, message)
        return "sent"
    except elixir.CallbackRefused as err:
        return ["refused", err.message]
    except elixir.ElixirError as err:
        return ["error", err.reason, err.message]


def forged(pid):
    """A pid with a MAC that is not the node's."""
    return send_to(beambridge.Pid(pid.etf, b"\0" * len(pid.mac)), "forged")


def pid_back(pid):
    return [pid, type(pid).__name__]


def add(a, b):
    return a + b


def nested(depth):
    """Elixir -> Python -> Elixir -> Python ... `depth` levels deep."""
    if depth == 0:
        return "bottom"
    return ["level", depth, elixir.call(FNS, "nested", [depth - 1])]


def callbacks_in_a_loop(n):
    total = 0
    for i in range(n):
        total += elixir.call(FNS, "double", [i])
    return total


def wait_in_elixir(ms):
    return elixir.call(FNS, "sleep", [ms])


def stream_with_callbacks(n):
    for i in range(n):
        yield elixir.call(FNS, "double", [i])


def short_mac(pid):
    """A pid whose MAC is too short to be the node's: refused, nothing crashes."""
    return send_to(beambridge.Pid(pid.etf, b"x"), "short")


def short_mac_result(pid):
    return beambridge.Pid(pid.etf, b"x")


def wrong_arity():
    """A callback frame whose argument list is longer than the arity it names."""
    from beambridge import callback_control as cc

    cb = elixir._callbacks
    call_id = cb.path.cancel.call_id
    cid = cb._cid()
    cb._write(lambda e: cc.callback(call_id, cid, FNS.encode(), b"double", 1, e), [1, 2, 3])
    try:
        return ["ok", cb._await(cid)]
    except elixir.ElixirError as err:
        return ["error", err.reason, err.message]


def huge_arity():
    """A callback frame with an arity no function has: a protocol violation."""
    from beambridge import callback_control as cc

    cb = elixir._callbacks
    call_id = cb.path.cancel.call_id
    cid = cb._cid()
    cb._write(lambda e: cc.callback(call_id, cid, FNS.encode(), b"double", 10**300, e), [1])
    return cb._await(cid)
