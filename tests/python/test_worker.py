"""The real worker process and the control channel (protocol/SPEC.md §8,
§10): messages, handlers, logs, exit statuses, protocol violations."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from beambridge import Atom, control, cpus
from beambridge.etf import encode
from beambridge.spin import DEFAULT_SPIN_US, spin_seconds
from hypothesis import given
from hypothesis import strategies as st
from test_etf import canon
from worker_harness import BAD_CALL, MOD, WorkerProcess, running


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    w = WorkerProcess().start()
    yield w
    assert w.stop() == 0


def test_ready_handshake(worker: WorkerProcess) -> None:
    assert worker.ready == control.Ready(worker.pid, control.PROTOCOL_VERSION)


def test_add(worker: WorkerProcess) -> None:
    assert worker.call("add", 2, 4) == ("ok", 6)
    assert worker.call("add", 2**70, 1) == ("ok", 2**70 + 1)
    assert worker.call("add", [1], [2]) == ("ok", [1, 2])


VALUES: list[Any] = [
    0, 255, 256, -1, 2**31 - 1, -(2**31), 2**31, 2**64, -(2**64), 2**2100, -(2**2100),
    0.0, -1.5, 1e308, 5e-324,
    True, False, None, Atom("ok"), Atom("日本"), Atom(""),
    b"", b"bytes", bytes(range(256)),
    [], [1, 2, 3], [1, Atom("a"), b"b", [2.5]], (), (1,), tuple(range(300)),
    {}, {Atom("a"): 1, b"b": [2]}, {(1, 2): {Atom("nested"): (None, True)}},
]  # fmt: skip


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{type(v).__name__}:{v!r:.30}")
def test_identity_round_trip(worker: WorkerProcess, value: Any) -> None:
    status, result = worker.call("echo", value)
    assert status == "ok"
    assert canon(result) == canon(value)


@pytest.mark.parametrize(
    ("value", "python_type"),
    [(1, "int"), (2**100, "int"), (1.5, "float"), (True, "bool"), (None, "NoneType"),
     (Atom("x"), "Atom"), (b"x", "bytes"), ([1], "list"), ((1,), "tuple"), ({1: 2}, "dict")],
)  # fmt: skip
def test_handlers_get_the_python_types_of_section_8(
    worker: WorkerProcess, value: Any, python_type: str
) -> None:
    kind = worker.ok("describe", value)[0]
    assert kind == python_type.encode()


def test_str_results_are_binaries(worker: WorkerProcess) -> None:
    assert worker.ok("echo", "héllo") == "héllo".encode()  # a str arg is a binary already
    assert worker.ok("make_bytearray", 3) == b"bbb"
    assert worker.ok("make_memoryview", 2) == b"mm"


def test_module_and_function_as_binaries(worker: WorkerProcess) -> None:
    worker.send(control.call(999, b"bbtest_handlers", b"add", {}, []), [1, 2])
    assert worker.recv() == control.Answer(999, True, [], None, [])
    assert worker.body == 3


def test_python_exception_with_traceback(worker: WorkerProcess) -> None:
    status, (kind, type_name, message, tb) = worker.call("fail", b"boom")
    assert (status, kind, type_name, message) == ("error", "python_exception", b"ValueError",
                                                  b"b'boom'")  # fmt: skip
    assert tb.startswith(b"Traceback (most recent call last):")
    assert b"bbtest_handlers.py" in tb and b"raise ValueError(message)" in tb
    assert b"beambridge/worker.py" not in tb  # the worker's own frame is left out
    status, (kind, type_name, message, _) = worker.call("fail_custom")
    assert type_name == b"bbtest_handlers.CustomError" and message == b"custom"
    # the worker goes on
    assert worker.call("add", 1, 1) == ("ok", 2)


def test_wrong_arity_is_a_python_exception(worker: WorkerProcess) -> None:
    status, (kind, type_name, message, _) = worker.call("add", 1)
    assert (status, kind, type_name) == ("error", "python_exception", b"TypeError")
    assert b"missing 1 required positional argument" in message


def test_no_such_module(worker: WorkerProcess) -> None:
    status, (kind, reason, message) = worker.call("f", module=Atom("no_such_module_here"))
    assert (status, kind, reason) == ("error", BAD_CALL, "no_module")
    assert b"No module named 'no_such_module_here'" in message


def test_no_such_function(worker: WorkerProcess) -> None:
    status, (kind, reason, message) = worker.call("no_such_function")
    assert (status, kind, reason) == ("error", BAD_CALL, "no_function")
    assert b"no_such_function" in message
    status, (kind, reason, message) = worker.call("not_callable")
    assert reason == "no_function" and b"non-callable int" in message


def test_a_module_that_fails_to_import(worker: WorkerProcess) -> None:
    status, (kind, reason, message) = worker.call("f", module=Atom("bbtest_broken"))
    assert (status, kind, reason) == ("error", BAD_CALL, "no_module")
    assert b"ZeroDivisionError" in message and b"Traceback" in message


def answer_to(worker: WorkerProcess, call_id: int) -> control.Answer:
    answer = worker.recv()
    assert isinstance(answer, control.Answer) and answer.call_id == call_id, answer
    return answer


def test_args_must_be_a_list(worker: WorkerProcess) -> None:
    worker.send(control.call(77, MOD, Atom("add"), {}, []), (1, 2))
    answer = answer_to(worker, 77)
    assert not answer.ok and answer.error[:2] == (BAD_CALL, "bad_term")


def test_a_call_without_a_body_is_a_bad_call(worker: WorkerProcess) -> None:
    worker.send(control.call(79, MOD, Atom("add"), {}, []))
    answer = answer_to(worker, 79)
    assert answer.error[:2] == (BAD_CALL, "bad_term") and b"argument list" in answer.error[2]
    assert worker.call("add", 1, 2) == ("ok", 3)


def test_args_the_decoder_refuses_get_bad_term_with_the_call_id(worker: WorkerProcess) -> None:
    # the body [<pid>] does not decode; the envelope names the call all the same
    pid = b"X\x64\x00\x0dnonode@nohost\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00"
    body = b"\x83l\x00\x00\x00\x01" + pid + b"j"
    worker.send(control.call(78, MOD, Atom("echo"), {}, []), raw_body=body)
    answer = answer_to(worker, 78)
    assert answer.error[:2] == (BAD_CALL, "bad_term") and b"NEW_PID" in answer.error[2]
    assert worker.call("add", 1, 2) == ("ok", 3)


@pytest.mark.parametrize(
    "envelope",
    [
        control.call(80, MOD, Atom("add"), {}, [(1, 64)]),
        control.call(80, MOD, Atom("add"), {}, (1, 64, 128, 1)),
        control.call(80, MOD, Atom("add"), {}, [(1, 64, 128, -1)]),
        control.call(80, MOD, Atom("add"), [], []),
    ],
    ids=["short_entry", "not_a_list", "negative", "opts"],
)
def test_a_malformed_call_envelope_is_a_bad_call(worker: WorkerProcess, envelope: Any) -> None:
    """An envelope that decodes and names a call, but whose slices or options are not
    the shapes of §8.3: an error of that call (bad_term); the worker carries on."""
    worker.send(envelope, [1, 2])
    answer = answer_to(worker, 80)
    assert answer.error[:2] == (BAD_CALL, "bad_term"), answer
    assert worker.call("add", 1, 2) == ("ok", 3)


def test_results_that_cannot_be_sent(worker: WorkerProcess) -> None:
    status, (kind, reason, message) = worker.call("unsupported")
    assert (status, kind, reason) == ("error", BAD_CALL, "bad_term")
    assert b"cannot send <class 'set'> to Elixir" in message
    status, (kind, reason, message) = worker.call("nan")
    assert reason == "bad_term" and b"NaN" in message
    # bool arrays travel since the tensor format (protocol/formats/tensor.md) carries them;
    # object arrays are refused (tests/python/test_format_tensor.py)
    desc = {b"dtype": b"|b1", b"shape": [2], b"order": b"C"}
    assert worker.ok("bool_array") == (Atom("$bb_tensor"), desc, b"\x01\x00")
    # C-order arrays of the original dtypes too: one form for every tensor
    desc = {b"dtype": b"<i8", b"shape": [2, 1], b"order": b"C"}
    got = worker.ok("make_array", b"<i8", [2, 1])
    assert got == (Atom("$bb_tensor"), desc, bytes(8) + (1).to_bytes(8, "little"))


def test_numpy_scalars_are_numbers(worker: WorkerProcess) -> None:
    assert worker.ok("numpy_scalars") == [7, 1.5, True, 3]


def test_prints_arrive_as_log_frames(worker: WorkerProcess) -> None:
    worker.logs.clear()
    assert worker.call("chatty", 5) == ("ok", 5)
    # everything the handler wrote arrived before its answer
    assert worker.log_text("stdout") == b"to stdout 5\nraw fd 1\nno newline"
    # a printed line is written at once, not piece by piece
    assert any(s == "stdout" and d.startswith(b"to stdout 5\n") for s, d in worker.logs)
    assert worker.log_text("stderr") == b"to stderr 5\n"
    assert worker.call("add", 1, 2) == ("ok", 3)


def test_a_megabyte_of_output_does_not_block_or_corrupt(worker: WorkerProcess) -> None:
    worker.logs.clear()
    assert worker.call("big_print", 1 << 20) == ("ok", 1 << 20)
    assert worker.log_text("stdout") == b"x" * (1 << 20)
    assert all(len(data) <= 65536 for _, data in worker.logs)


def test_many_calls_in_order(worker: WorkerProcess) -> None:
    for i in range(500):
        assert worker.call("add", i, i) == ("ok", 2 * i)


def _call_frame(call_id: int, *args: Any) -> bytes:
    parts = control.join(
        control.call(call_id, Atom("bbtest_handlers"), Atom("echo"), {}, []), [encode(list(args))]
    )
    data = b"".join(parts)
    return len(data).to_bytes(4, "big") + data


def _answers(worker: WorkerProcess, n: int) -> list[tuple[int, Any]]:
    got = []
    for _ in range(n):
        answer = worker.recv()
        assert isinstance(answer, control.Answer) and answer.ok, answer
        got.append((answer.call_id, worker.read(worker.body)))  # handles resolved
    return got


def test_frames_are_read_however_the_pipe_cuts_them(worker: WorkerProcess) -> None:
    """The channel reader: one frame a byte at a time, several frames in one write, a
    frame cut in the middle of its length, and frames over the 64 KiB read size."""
    worker.flush()
    one = _call_frame(9001, b"byte by byte")
    for i in range(len(one)):
        worker.send_raw(one[i : i + 1])
        if i % 7 == 0:
            time.sleep(0.001)
    assert _answers(worker, 1) == [(9001, b"byte by byte")]

    frames = [_call_frame(9100 + i, i, b"x" * (i * 997)) for i in range(20)]
    worker.send_raw(b"".join(frames))
    assert _answers(worker, 20) == [(9100 + i, (i, b"x" * (i * 997))) for i in range(20)]

    big = [_call_frame(9200 + i, b"%d" % i * (40_000 + 30_000 * i)) for i in range(3)]
    stream = b"".join(big)
    for start in range(0, len(stream), 50_001):  # cuts inside lengths and bodies
        worker.send_raw(stream[start : start + 50_001])
    assert _answers(worker, 3) == [(9200 + i, b"%d" % i * (40_000 + 30_000 * i)) for i in range(3)]


# ---- waiting for the next call ----------------------------------------------------------------


def test_spin_defaults_to_polling_only_with_more_than_one_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path)  # no quota
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert spin_seconds(None) == 0.0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert spin_seconds(None) == spin_seconds("") == DEFAULT_SPIN_US / 1e6
    assert spin_seconds("0") == 0.0
    assert spin_seconds("250") == 250e-6
    assert spin_seconds("-5") == spin_seconds("fast") == DEFAULT_SPIN_US / 1e6
    # a container's quota of one CPU on a machine of many: no polling
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert spin_seconds(None) == 0.0
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert spin_seconds(None) == DEFAULT_SPIN_US / 1e6


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "250000 100000\n"}, 2.5),
        ({"cpu.max": "50000 100000"}, 0.5),
        ({"cpu.max": "garbage"}, None),
        ({"cpu.max": "0 100000"}, None),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "200000\n"}, None),  # no period: unreadable, no quota
        ({}, None),
    ],
)
def test_cgroup_cpu_quota_v1_and_v2(tmp_path: Any, files: dict[str, str], quota: Any) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpus.cgroup_quota(tmp_path) == quota
    assert cpus.usable_cpus(tmp_path) == (
        len(os.sched_getaffinity(0)) if quota is None else min(len(os.sched_getaffinity(0)), quota)
    )


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("spin_us", [0, 400_000])
def test_after_an_answer_the_worker_polls_for_spin_us_then_sleeps(spin_us: int) -> None:
    """With a spin the worker stays on the CPU after an answer (a call sent then is
    read at once) and goes to sleep when it is over; without one it sleeps at once."""
    w = WorkerProcess(BEAMBRIDGE_SPIN_US=str(spin_us)).start()
    try:
        assert w.call("add", 1, 2) == ("ok", 3)
        time.sleep(0.05)  # inside the spin: the next call is read by the polling loop
        assert w.call("add", 2, 2) == ("ok", 4)
        start = _cpu_seconds(w.pid)
        time.sleep(0.3)
        polling = _cpu_seconds(w.pid) - start
        time.sleep(0.3)  # the spin is over
        start = _cpu_seconds(w.pid)
        time.sleep(0.5)
        asleep = _cpu_seconds(w.pid) - start
        assert w.call("add", 3, 3) == ("ok", 6)
    finally:
        assert w.stop() == 0
    assert asleep < 0.05
    if spin_us:
        assert polling >= 0.1, polling
    else:
        assert polling < 0.05, polling


# ---- lifetimes and exit statuses ------------------------------------------------------------


def test_eof_exits_0_promptly() -> None:
    w = WorkerProcess(BEAMBRIDGE_THRESHOLD="1024").start()
    assert w.ok("make_bytes", 5000)[0] == Atom("$bb_slice")
    start = time.monotonic()
    assert w.stop() == 0
    assert time.monotonic() - start < 2.0


def test_shutdown_exits_0() -> None:
    w = WorkerProcess(BEAMBRIDGE_THRESHOLD="1024").start()
    w.ok("make_bytes", 5000)
    w.send(control.SHUTDOWN)
    assert w.wait() == 0
    w.cleanup()


def test_sigterm_exits_0() -> None:
    w = WorkerProcess(BEAMBRIDGE_THRESHOLD="1024").start()
    w.ok("make_bytes", 5000)
    os.kill(w.pid, signal.SIGTERM)
    assert w.wait() == 0
    w.cleanup()


def test_a_frame_over_64_mib_exits_3() -> None:
    w = WorkerProcess().start()
    w.send_raw((64 * 1024 * 1024 + 1).to_bytes(4, "big"))
    assert w.wait() == 3
    with pytest.raises(EOFError):
        w.recv()
    assert b"over the limit" in w.log_text("stderr")
    w.cleanup()


@pytest.mark.parametrize(
    "frame",
    [
        b"".join(control.join((Atom("what"), 1))),  # an envelope that is no message
        b"\x00\x00\x00\x09" + encode(1),  # envelope_size past the frame
        b"\x00\x00\x00\x03xyz",  # an envelope that does not decode
        b"\x00\x00",  # no envelope_size at all
        b"".join(control.join(control.object_dropped(1), [encode(1)])),  # a stray body
        b"".join(control.join((Atom("call"), 0, MOD, Atom("add"), {}, []), [encode([])])),
    ],
    ids=["unknown", "size_past_frame", "undecodable", "short", "stray_body", "call_id_0"],
)
def test_a_frame_that_is_no_message_exits_3(frame: bytes) -> None:
    """§8.1: an envelope that does not decode, or size fields that run past the frame, is
    a protocol violation; so is an envelope that is not a message of §8.3."""
    w = WorkerProcess().start()
    w.send_frame([frame])
    assert w.wait() == 3
    assert b"protocol violation" in b"".join(d for _, d in drain(w))
    w.cleanup()


def drain(w: WorkerProcess) -> list[tuple[str, bytes]]:
    try:
        while True:
            w.recv_any(5)
    except (EOFError, TimeoutError):
        pass
    return w.logs


def test_sys_exit_in_a_handler_ends_the_worker_cleanly() -> None:
    w = WorkerProcess(BEAMBRIDGE_THRESHOLD="1024").start()
    w.ok("make_bytes", 5000)
    w.send(control.call(1, MOD, Atom("sys_exit"), {}, []), [7])
    assert w.wait() == 7
    w.cleanup()


def test_os_exit_in_a_handler_ends_the_worker() -> None:
    w = WorkerProcess().start()
    w.send(control.call(1, MOD, Atom("exit_now"), {}, []), [9])
    assert w.wait() == 9
    w.cleanup()


def test_fds_3_and_4_are_required() -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "beambridge.worker"],
        capture_output=True,
        timeout=30,
        close_fds=True,
    )
    assert proc.returncode == 2
    assert b"fds 3 and 4" in proc.stderr


def test_a_failed_start_says_why_over_the_channel(tmp_path: Any) -> None:
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "__init__.py").write_text("raise ImportError('numpy is broken')\n")
    w = WorkerProcess(PYTHONPATH=str(tmp_path))
    try:
        with pytest.raises(EOFError):
            w.recv()
        assert w.wait() == 1
        assert b"cannot start" in w.log_text("stderr")
        assert b"ImportError: numpy is broken" in w.log_text("stderr")
    finally:
        w.cleanup()


def test_a_beam_of_another_major_is_refused_naming_both_versions() -> None:
    """Protocol majors do not work together (§8.4): the worker says so and exits."""
    w = WorkerProcess(BEAMBRIDGE_PROTOCOL="3.0")
    try:
        with pytest.raises(EOFError):
            w.recv()
        assert w.wait() == 1
        said = w.log_text("stderr")
        assert b"the BEAM speaks protocol 3.0 and this worker speaks 2.8" in said
        assert b"Traceback" not in said
    finally:
        w.cleanup()


@pytest.mark.parametrize("beam", ["2.0", "2.9"])
def test_a_beam_of_another_minor_is_served(beam: str) -> None:
    """An older BEAM gets nothing newer than it knows; a newer one gets this worker's
    minor, and calls run."""
    with running(BEAMBRIDGE_PROTOCOL=beam) as w:
        assert w.ready.version == control.PROTOCOL_VERSION
        assert w.ok("add", 2, 3) == 5


def test_the_worker_path_is_transport_2_in_pure_python(worker: WorkerProcess) -> None:
    import importlib.util

    modules = {m.decode() for m in worker.ok("loaded", b"beambridge")}
    assert {"beambridge.calls", "beambridge.control", "beambridge.decoder"} <= modules
    # transport 1 (named regions, control blocks, the reaper, the C atomics) is gone
    for gone in ("region", "control_block", "reaper", "_atomic"):
        assert importlib.util.find_spec(f"beambridge.{gone}") is None
    for name in modules - {"beambridge._pyheap"}:
        spec = importlib.util.find_spec(name)
        assert spec is not None and str(spec.origin).endswith(".py"), name


def test_without_the_heap_module_the_worker_gives_memory_back_as_cpython_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # beambridge._pyheap, the one compiled module on the worker's path, is optional
    import beambridge
    from beambridge import worker as worker_module

    monkeypatch.setitem(sys.modules, "beambridge._pyheap", None)
    monkeypatch.delattr(beambridge, "_pyheap", raising=False)
    assert worker_module.keep_heap(1 << 30) is None


def test_importing_the_package_does_not_import_numpy() -> None:
    """``python -m beambridge.worker`` imports the package before it takes fds 1 and 2:
    NumPy's import-time output must come after, to be forwarded."""
    import subprocess

    code = "import sys, beambridge; print('numpy' in sys.modules, beambridge.Bundle.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "Bundle"]


def test_the_working_directory_is_dropped_from_sys_path_before_handlers_import(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Python 3.10 has no PYTHONSAFEPATH: the worker drops the directory ``-m`` put
    first, so a module there cannot shadow a handler of ``python_path``."""
    from types import SimpleNamespace

    from beambridge import worker

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), "/handlers", "/site"])
    monkeypatch.setattr(sys, "flags", SimpleNamespace(safe_path=False))
    worker._safe_path()
    assert sys.path == ["/handlers", "/site"]
    worker._safe_path()  # the next entry is not the working directory: kept
    assert sys.path == ["/handlers", "/site"]


def test_answers_carry_the_workers_timings_to_a_beam_of_2_5() -> None:
    """Since 2.5 ``{:ok, ...}`` and ``{:error, ...}`` end with ``{decode, run, encode}``
    in microseconds (§8.3): the handler's time is the run's; an older BEAM gets
    4-tuples."""
    with running(BEAMBRIDGE_PROTOCOL="2.5") as w:
        w.ok("nap", 0.05, b"x" * 300_000)
        timings = w.answer.timings
        assert timings is not None and 50_000 <= timings[1] < 5_000_000, timings
        assert timings[0] >= 0 and timings[2] > 0  # a 300 KB result takes a slice
        status, _ = w.call("fail", b"no")
        assert status == "error" and w.answer.timings is not None
        assert w.answer.timings[1] < 5_000_000
    with running(BEAMBRIDGE_PROTOCOL="2.4") as w:
        assert w.ok("add", 2, 3) == 5 and w.answer.timings is None


_u64 = st.integers(0, 2**64 - 1)
_release = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**40), st.integers(0, 2**32 - 1))


@given(_u64, _u64, _u64, st.lists(_release, max_size=3))
def test_a_timed_answer_head_is_the_timed_envelopes_etf(
    d: int, r: int, e: int, released: list[tuple[int, int, int]]
) -> None:
    from beambridge import control_shortcuts
    from beambridge.call_parts import Reply

    head = control_shortcuts.answer_head(7, [], released)
    reply = Reply([], control.ok(7, [], released), [b"\x83a\x01"], head)
    reply.timed(d, r, e)
    assert reply.head == encode((*control.ok(7, [], released), (d, r, e)))
    parsed = control.from_worker(reply.envelope, True)
    assert isinstance(parsed, control.Answer) and parsed.timings == (d, r, e)
    # out of range, or not a 3-tuple: not an answer
    with pytest.raises(control.ProtocolError):
        control.from_worker((*control.ok(7, [], released), (d, r, -1)), True)
