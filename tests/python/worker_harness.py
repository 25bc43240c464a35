"""Starts the real worker (``python -m beambridge.worker``) with fds 3 and 4 wired to
pipes and speaks the control protocol to it, playing the BEAM (tests/python/test_worker*)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from beambridge import Atom, Region
from beambridge.etf import decode, encode

PREFIX = "bbwk"
HANDLERS = str(Path(__file__).parent / "handlers")
CALL, LOG, OK, ERROR = Atom("call"), Atom("log"), Atom("ok"), Atom("error")
TAG_REGION, TAG_BUFFER, TAG_TENSOR = Atom("$bb_region"), Atom("$bb_buffer"), Atom("$bb_tensor")
MOD = Atom("bbtest_handlers")


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HANDLERS, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(BEAMBRIDGE_SHM_PREFIX=PREFIX, BEAMBRIDGE_WORKER_ID="test-worker")
    env.update(extra)
    return env


def control_pipes() -> tuple[int, int, Any]:
    """(our write end -> its fd 3, our read end <- its fd 4, preexec_fn placing them)."""
    r3, w3 = os.pipe()
    r4, w4 = os.pipe()

    def place() -> None:  # in the child: its ends become exactly fds 3 and 4
        a = fcntl.fcntl(r3, fcntl.F_DUPFD, 10)
        b = fcntl.fcntl(w4, fcntl.F_DUPFD, 10)
        os.dup2(a, 3)
        os.dup2(b, 4)

    return w3, r4, (place, r3, w4)


class WorkerProcess:
    """One worker process and the BEAM's end of its control channel."""

    def __init__(self, argv: list[str] | None = None, **env: str) -> None:
        self.to_worker, self.from_worker, (place, r3, w4) = control_pipes()
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "beambridge.worker"],
            preexec_fn=place,
            close_fds=False,
            env=worker_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.close(r3)
        os.close(w4)
        self.buffer = b""
        self.logs: list[tuple[Atom, bytes]] = []
        self.next_id = 1
        self.ready: Any = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> WorkerProcess:
        self.ready = self.recv()
        return self

    # ---- frames ------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.to_worker, view) :]

    def send(self, term: Any) -> None:
        body = encode(term)
        self.send_raw(len(body).to_bytes(4, "big") + body)

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_worker], [], [], left)[0]:
                raise TimeoutError(f"no frame from the worker; logs so far: {self.logs!r:.2000}")
            chunk = os.read(self.from_worker, 1 << 20)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def recv_any(self, timeout: float = 30.0) -> Any:
        """The next frame (a log frame too); EOFError when the worker closed fd 4."""
        deadline = time.monotonic() + timeout
        if not self._fill(4, deadline):
            raise EOFError
        n = int.from_bytes(self.buffer[:4], "big")
        if not self._fill(4 + n, deadline):
            raise EOFError
        body, self.buffer = self.buffer[4 : 4 + n], self.buffer[4 + n :]
        return decode(body)

    def recv(self, timeout: float = 30.0) -> Any:
        """The next frame that is not a log (logs are collected in ``self.logs``)."""
        while True:
            term = self.recv_any(timeout)
            if type(term) is tuple and len(term) == 3 and term[0] == LOG:
                self.logs.append((term[1], term[2]))
                continue
            return term

    def log_text(self, stream: str) -> bytes:
        return b"".join(data for s, data in self.logs if s == stream)

    # ---- calls -------------------------------------------------------------------------

    def call(self, function: str, *args: Any, module: Any = MOD) -> Any:
        """Send a call; return ``("ok", result)`` or ``("error", reason)``."""
        call_id = self.next_id
        self.next_id += 1
        self.send((CALL, call_id, module, Atom(function), list(args)))
        reply = self.recv()
        assert type(reply) is tuple and len(reply) == 3, reply
        assert reply[1] == call_id, f"answer {reply!r:.200} for call {call_id}"
        return (str(reply[0]), reply[2])

    def ok(self, function: str, *args: Any, **kw: Any) -> Any:
        status, value = self.call(function, *args, **kw)
        assert status == "ok", value
        return value

    # ---- the end ---------------------------------------------------------------------------

    def close_input(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.to_worker)

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        self.close_input()
        try:
            return self.wait()
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.to_worker, self.from_worker):
            with contextlib.suppress(OSError):
                os.close(fd)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def regions_of(pid: int) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"{PREFIX}-{pid}-"))


def read_result(handle: Any) -> tuple[Region, Any]:
    """Attach the region of a result handle and read its frame (the BEAM's side)."""
    assert handle[0] == TAG_REGION, handle
    region = Region.attach(handle[2].decode())
    frame = region.read_frame()
    assert frame.header.generation == handle[3]
    return region, frame


def mapped_names(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def gone(pid: int) -> bool:
    """The process does not exist any more, or is a zombie nobody has waited for yet."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
    except FileNotFoundError:
        return True
    return line[line.rindex(b")") + 2 : line.rindex(b")") + 3] in (b"Z", b"X")
