"""The Python worker: ``python -m beambridge.worker`` (protocol/SPEC.md §8).

Started by ``Bridge.Worker`` through a Port. Frames (a ``{packet, 4}`` length, then
``envelope_size | envelope | body``, `beambridge.control`) arrive on fd 3 and leave on
fd 4. Before anything else the worker points fds 1 and 2 at pipes of its own and
forwards what arrives there as ``{:log, :stdout | :stderr, data}``, so nothing a
handler prints can corrupt a frame.

This module is the process's life: the log pipes, signals, the watchdog, idle work,
exit statuses, and where each frame and answer goes (the pipe or the lane, §8.5).
Reading fd 3 is `beambridge.channel.Channel`, how long to poll `beambridge.spin`, the
lane `beambridge.lane`, and a call's own path, from envelope to answer,
`beambridge.calls.CallPath`.

Messages (§8.3)::

    BEAM -> worker   {:object, kind, owner_pid, fd, object_id, size, nonce}
                     | {:object_dropped, object_id} | {:sealed_mapped, [object_id]}
                     | {:call, id, module, function, opts, slices} + args | :shutdown
                     | :lane | {:element, id, sid, seq, checkpoint, slices} + element
                     | {:ack, id, sid, seq} | {:done, id, sid, count, checksum}
                     | {:cancel, id, sid} | {:abort, id, sid, message}
    worker -> BEAM   {:ready, os_pid, {2, 4}} | {:object, ...} | {:object_dropped, id}
                     | {:ok, id, slices, released} + result
                     | {:error, id, error, released} | {:released, [slice]}
                     | {:fallbacks, [...]} (to a BEAM of 2.1) | {:log, stream, data}
                     | :lane (in answer to a lane the BEAM gave)
                     | {:element, ...} + element | {:ack, ...} | {:done, ...} (streams, 2.3)

While a call runs, the worker reads the frames of its streams (§8.6) as the handler
asks for elements and as the result stream waits for acknowledgements (`pump`).

The cancel signal (``SIGUSR1``, §8.7) interrupts the handler of the call in flight
(`beambridge.cancel`); the worker's own threads block it, and frames are read and
written shielded from it.

Before it blocks on fd 3 the worker reports the BEAM slices let go since its last
answer (``{:released, ...}``). When no frame arrives for `IDLE_AFTER` seconds it takes
back the slices whose leases the BEAM ended, reports releases, and drops arenas that
have been empty for `TRIM_AFTER` seconds (keeping one of ``BEAMBRIDGE_MIN_ARENA``),
and gives back the small-object memory it kept for the next call (`keep_heap`).

Environment (§8.4): ``BEAMBRIDGE_WORKER_ID`` (in the worker's own log lines),
``BEAMBRIDGE_THRESHOLD`` (bytes, default 65536), ``BEAMBRIDGE_ARENA_LIMIT`` (bytes of
arenas, default 1 GiB), ``BEAMBRIDGE_MIN_ARENA`` (bytes of the first arena, default 8
MiB), ``BEAMBRIDGE_VERIFY`` (``1`` checksums result payloads and verifies argument
payloads; default ``0``), ``BEAMBRIDGE_UNTRUSTED`` (``1``: every result slice is a
sealed object of its own, §11), ``BEAMBRIDGE_SPIN_US`` (microseconds to poll for the
next call after an answer before blocking; default `beambridge.spin.spin_seconds`),
``BEAMBRIDGE_PROTOCOL`` (the BEAM's protocol version, ``2.1``: `beam_protocol`),
``BEAMBRIDGE_HEAP_KEEP`` (bytes of freed small-object memory kept, default 1 GiB; ``0``
gives it back at once).

Exit status: 0 after EOF on fd 3, ``:shutdown``, SIGTERM or the parent's death (the
kernel frees every shared object: nothing is left behind); 3 on a protocol violation
(a frame over `MAX_CONTROL_FRAME`, or one that is not a message of §8.3); 2 when fds 3/4
are missing; 1 when the worker cannot start (the reason is sent as a ``log`` frame
first) or crashes; a handler's ``sys.exit(n)`` exits with ``n``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time
import traceback
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

# Only what the fd juggling in main() needs is imported up front; NumPy (through
# .calls) comes after fds 1 and 2 point at the log pipes, so even its import-time
# warnings reach the BEAM's Logger.
from . import control, control_shortcuts, elixir
from .callback_control import CallbackReply, RefsDropped, SessionEnd
from .cancel import Canceller, block_in_this_thread
from .channel import LOG_CHUNK as _LOG_CHUNK
from .channel import Channel
from .control import MAX_CONTROL_FRAME, ProtocolError
from .errors import ArenaError
from .etf import Atom
from .lane import Lane, frames
from .spin import Spin, spin_seconds
from .stream_control import Element, StreamMessage

if TYPE_CHECKING:
    from .calls import Reply

__all__ = [
    "EXIT_PROTOCOL",
    "IDLE_AFTER",
    "MAX_CONTROL_FRAME",
    "TRIM_AFTER",
    "beam_protocol",
    "keep_heap",
    "main",
]

EXIT_PROTOCOL = 3
#: Seconds without a frame after which the worker does its idle work.
IDLE_AFTER = 1.0
#: Seconds an arena must have been empty before idle work drops it.
TRIM_AFTER = 2.0

_IN_FD, _OUT_FD = 3, 4
_WATCHDOG_PERIOD = 0.1
#: Seconds a handler waiting on the BEAM (a stream, a callback) blocks at a time: the
#: cancel signal interrupts the wait but not the read, so it is seen within this.
_PUMP_WAIT = 0.05
_PR_SET_PDEATHSIG = 1
_MIB = 1 << 20


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw.strip() else default
    except ValueError:
        value = default
    return value if value >= 0 else default


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip() not in ("", "0", "false", "no")


def keep_heap(limit: int) -> Any:
    """`beambridge._pyheap` installed to keep up to ``limit`` bytes of the small-object
    memory calls free, for the next call (the worker gives it back when idle); None
    when that module is not built (memory freed goes back to the system at once)."""
    try:
        from . import _pyheap
    except ImportError:
        return None
    _pyheap.install(limit)
    return _pyheap


def beam_protocol(setting: str | None) -> tuple[int, int]:
    """The control protocol version the BEAM implements, from ``BEAMBRIDGE_PROTOCOL``
    (``"2.1"``); a BEAM that does not say is taken for 2.0, and the worker sends it
    nothing newer.

    >>> beam_protocol("2.1"), beam_protocol(None), beam_protocol("two")
    ((2, 1), (2, 0), (2, 0))
    """
    major, _, minor = (setting or "").strip().partition(".")
    if major.isdigit() and minor.isdigit():
        return int(major), int(minor)
    return (2, 0)


class Worker:
    """One worker process: the channel, the log pipes, and the call path."""

    def __init__(self, in_fd: int, out_fd: int, log_fds: dict[int, Atom], parent: int) -> None:
        from .calls import CallPath
        from .terms import DEFAULT_THRESHOLD

        self.channel = Channel(in_fd)
        self.out_fd = out_fd
        self.lock = threading.Lock()  # one writer of fd 4 at a time; logs drained under it
        self.log_fds = log_fds
        self.poller = select.poll()
        for fd in log_fds:
            self.poller.register(fd, select.POLLIN)
        self.worker_id = os.environ.get("BEAMBRIDGE_WORKER_ID", str(os.getpid()))
        beam = beam_protocol(os.environ.get("BEAMBRIDGE_PROTOCOL"))
        if beam[0] != control.PROTOCOL_VERSION[0]:
            raise control.OtherMajor(beam)
        self.path = CallPath(
            threshold=_env_int("BEAMBRIDGE_THRESHOLD", DEFAULT_THRESHOLD),
            arena_limit=_env_int("BEAMBRIDGE_ARENA_LIMIT", 1 << 30),
            min_arena=_env_int("BEAMBRIDGE_MIN_ARENA", 8 * _MIB),
            verify=_env_flag("BEAMBRIDGE_VERIFY"),
            untrusted=_env_flag("BEAMBRIDGE_UNTRUSTED"),
            report_fallbacks=beam >= (2, 1),
        )
        self.path.pieces = beam >= (2, 3)  # long result lists go as pieces (§8.6)
        self.path.timings = beam >= (2, 5)  # answers carry the worker's timings (§8.3)
        self.parent = parent  # the BEAM, or OTP's erl_child_setup that spawned us for it
        self.spin = Spin(spin_seconds(os.environ.get("BEAMBRIDGE_SPIN_US")))
        self.heap = keep_heap(_env_int("BEAMBRIDGE_HEAP_KEEP", 1 << 30))
        self.lane: Lane | None = None  # when the BEAM gives one (§8.5)
        self.written = 0  # frames written on fd 4
        self.exiting = False
        self.path.link = self  # streams read and write frames while a call runs
        elixir.attach(self.path.callbacks)  # beambridge.elixir.call / send

    # ---- output ------------------------------------------------------------------------

    def _write(self, parts: list[Any]) -> None:
        """Write one packet: the 4-byte length, then ``parts``. Caller holds the lock."""
        self.written += 1
        size = sum(map(len, parts))
        head = size.to_bytes(4, "big")
        if size < _LOG_CHUNK:
            self._write_all(b"".join([head, *parts]))
        else:
            self._write_all(head)
            for part in parts:
                self._write_all(part)

    def _write_all(self, data: Any) -> None:
        n = os.write(self.out_fd, data)
        if n < len(data):  # a pipe takes at most what it has room for
            view = memoryview(data)[n:]
            while view:
                view = view[os.write(self.out_fd, view) :]

    def send(self, envelope: Any, body: list[Any] | None = None) -> None:
        """Write one frame (logs pending on the pipes go first)."""
        parts = control.join(envelope, body)
        with self.path.cancel.shielded(), self.lock:
            self._drain_locked()
            self._write(parts)

    def send_reply(self, reply: Reply, seq: int = 0, written: int = 0) -> None:
        """The notices a reply needs first, then the reply, in one go: on the pipe, or
        for a call that came as lane batch ``seq`` in the lane when it fits and nothing
        went on the pipe since the call came (``written`` frames then: what the handler
        printed must reach the BEAM before its answer, §8.5)."""
        frames = [control.join(n) for n in reply.notices]
        frames.append(reply.frame())
        lane = self.lane
        with self.lock:
            self._drain_locked()
            quiet = self.written == written
            if seq and quiet and lane is not None and lane.answer(seq, frames):
                if lane.parked(seq):
                    self._write(control.join(control.lane_ring()))
                return
            for parts in frames:
                self._write(parts)
            if seq and lane is not None:
                lane.publish(seq, 0)  # the answer is on the pipe

    def send_frames(self, messages: list[tuple[Any, list[Any] | None]]) -> None:
        """Write several frames in one go (an element and the notices it needs)."""
        joined = [control.join(envelope, body) for envelope, body in messages]
        with self.path.cancel.shielded(), self.lock:
            self._drain_locked()
            for parts in joined:
                self._write(parts)

    def send_pending(self) -> None:
        """Arenas made or dropped, and BEAM slices let go, since the last frame."""
        for notice in self.path.take_notices():
            self.send(notice)
        released = self.path.take_released()
        if released:
            self.send(control.released(released))

    def log(self, text: str) -> None:
        """A line of the worker's own, as ``{:log, :stderr, data}``."""
        data = f"beambridge worker {self.worker_id}: {text}\n".encode("utf-8", "backslashreplace")
        with contextlib.suppress(OSError):
            self.send(control.log(control.A_STDERR, data))

    def _drain_locked(self) -> None:
        if not self.poller.poll(0):
            return
        for fd, stream in list(self.log_fds.items()):
            while True:
                try:
                    data = os.read(fd, _LOG_CHUNK)
                except BlockingIOError:
                    break
                if not data:  # every write end closed (a handler closed fd 1 or 2)
                    del self.log_fds[fd]
                    self.poller.unregister(fd)
                    break
                self._write(control.join(control.log(stream, data)))

    def forward_logs(self) -> None:
        """Thread body: forward what handlers write to fds 1 and 2 as it comes."""
        block_in_this_thread()
        poller = select.poll()
        for fd in self.log_fds:
            poller.register(fd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd not in self.log_fds:
                    poller.unregister(fd)
            try:
                with self.lock:
                    self._drain_locked()
            except OSError:
                return  # fd 4 is gone: the BEAM is, too
            time.sleep(0.001)  # let a busy printer batch a little

    # ---- lifetime ----------------------------------------------------------------------

    def exit(self, status: int) -> NoReturn:
        """Flush logs and leave at once (the kernel frees every shared object)."""
        if not self.exiting:
            self.exiting = True
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            with contextlib.suppress(Exception):
                if self.lock.acquire(timeout=1.0):
                    self._drain_locked()
        os._exit(status)

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        os._exit(0)  # between bytecodes of the main thread: no lock, no frame, just go

    def watchdog(self) -> None:
        """Thread body: every 100 ms, has the parent (the BEAM's spawner) died?"""
        block_in_this_thread()  # the cancel signal is the main thread's
        while True:
            time.sleep(_WATCHDOG_PERIOD)
            if os.getppid() != self.parent:
                os._exit(0)

    def violation(self, what: str) -> NoReturn:
        self.log(f"protocol violation: {what}; exiting with status {EXIT_PROTOCOL}")
        self.exit(EXIT_PROTOCOL)

    # ---- the loop ----------------------------------------------------------------------

    def run(self) -> NoReturn:
        self.send(control.ready(os.getpid()))
        spin = 0.0
        while True:
            self.send_pending()  # before blocking on fd 3
            try:
                frame = self.channel.read(IDLE_AFTER, spin, self.lane)
            except EOFError:
                self.exit(0)  # the BEAM closed the Port, or died
            except ProtocolError as err:
                self.violation(str(err))
            if frame is None:
                self.path.idle(TRIM_AFTER)
                if self.heap is not None:
                    self.heap.trim()
                continue
            if isinstance(frame, type):  # LaneRing: a call waits in the lane
                self.run_lane()
                spin = self.spin.current
                continue
            try:
                message, body = control_shortcuts.read_beam(frame)
            except ProtocolError as err:
                self.violation(str(err))
            del frame
            self.dispatch(message, body)
            # after an answer, the caller's next call often follows at once
            spin = self.spin.current if isinstance(message, control.Call) else 0.0

    def run_lane(self) -> None:
        """The batch waiting in the lane: its frames in order, the call's answer back
        through the lane."""
        assert self.lane is not None
        try:
            seq, batch = self.lane.take()
            messages = [control_shortcuts.read_beam(f) for f in frames(batch)]
        except ProtocolError as err:
            self.violation(str(err))
        del batch
        for message, body in messages:
            self.dispatch(message, body, seq)

    def pump(self, block: bool) -> bool:
        """Read one frame from the BEAM while a call runs, and handle it (its stream
        messages go to the call's streams); waits for one when ``block``. False when
        nothing was read. Called from handler code (a stream it iterates), the frame
        is read shielded from the cancel signal, which is raised after it (§8.7)."""
        cancel = self.path.cancel
        with cancel.shielded():
            return self._pump(block, cancel)

    def _pump(self, block: bool, cancel: Canceller) -> bool:
        while True:
            try:
                frame = self.channel.read(_PUMP_WAIT if block else 0.0, self.spin.current)
            except EOFError:
                self.exit(0)
            except ProtocolError as err:
                self.violation(str(err))
            if frame is None and block:
                if cancel.requested:
                    return False  # cancelled while it waited: raised on the way out
                continue
            if frame is None or isinstance(frame, type):  # a ring: no call waits now
                return frame is not None
            try:
                message, body = control_shortcuts.read_beam(frame)
            except ProtocolError as err:
                self.violation(str(err))
            del frame
            if isinstance(message, control.Call):
                self.violation(f"call {message.call_id} came while another was in flight")
            self.dispatch(message, body)
            return True

    def on_stream(self, message: StreamMessage, body: memoryview | None) -> None:
        """A stream message: to the call in flight, or (late, of a call answered)
        dropped, the slices of an element let go."""
        streams = self.path.streams
        if streams is not None and message.call_id == streams.call_id:
            wrong = streams.on_message(message, body)
            if wrong is not None:
                self.violation(f"call {message.call_id}: {wrong}")
        elif isinstance(message, Element):
            self.path.let_go(message.slices)

    def dispatch(self, message: control.BeamMessage, body: memoryview | None, seq: int = 0) -> None:
        if isinstance(message, StreamMessage):
            self.on_stream(message, body)
        elif isinstance(message, CallbackReply):
            self.path.callbacks.on_reply(message, body)
        elif isinstance(message, RefsDropped):
            self.path.refs.drop(message.session, message.refs)
        elif isinstance(message, SessionEnd):
            self.path.refs.end(message.session)
        elif isinstance(message, control.Call):
            self.spin.call_came()
            written = self.written
            reply = self.path.run(message, body)
            del body
            self.send_reply(reply, seq, written)
            self.spin.answered()
            self.path.after_answer()
        elif isinstance(message, control.LaneRing):
            if self.lane is not None and self.lane.pending():
                self.run_lane()
        elif isinstance(message, control.ObjectAnnouncement) and message.kind == "lane":
            self.open_lane(message)
        elif isinstance(message, control.ObjectAnnouncement):
            try:
                self.path.map_object(message)
            except ArenaError as err:
                self.log(f"cannot map the BEAM's {message.kind} {message.object_id}: {err}")
        elif isinstance(message, control.ObjectDropped):
            self.path.drop_object(message.object_id)
        elif isinstance(message, control.SealedMapped):
            self.path.sealed_mapped(message.object_ids)
        else:
            self.exit(0)  # :shutdown

    def open_lane(self, message: control.ObjectAnnouncement) -> None:
        """Map the lane the BEAM made for this interpreter; without it calls keep to
        the pipe."""
        try:
            lane = Lane.open(message)
        except (ArenaError, ProtocolError) as err:
            self.log(f"cannot map the BEAM's lane {message.object_id}: {err}")
            return
        if self.lane is not None:
            self.lane.close()
        self.lane = lane


def _set_parent_death_signal() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _take_stdio() -> tuple[int, int, dict[int, Atom]]:
    """Move the control channel off fds 3/4 (close-on-exec copies, so a handler's child
    processes do not inherit it), give fd 0 /dev/null, and point fds 1 and 2 at pipes
    whose read ends (non-blocking) the worker forwards."""
    try:
        in_fd = os.dup(_IN_FD)
        out_fd = os.dup(_OUT_FD)
    except OSError:
        sys.stderr.write(
            "beambridge.worker: fds 3 and 4 must be the control channel (start the worker "
            "from Bridge.Worker, a Port with :nouse_stdio)\n"
        )
        sys.exit(2)
    os.close(_IN_FD)
    os.close(_OUT_FD)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    log_fds: dict[int, Atom] = {}
    for target, stream in ((1, control.A_STDOUT), (2, control.A_STDERR)):
        r, w = os.pipe()
        os.dup2(w, target)
        os.close(w)
        os.set_blocking(r, False)
        log_fds[r] = stream
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            f.reconfigure(line_buffering=True, write_through=False, errors="backslashreplace")  # type: ignore[union-attr]
    return in_fd, out_fd, log_fds


def _safe_path() -> None:
    """Handlers import from the pool's ``python_path`` first: drop the working
    directory that ``python -m`` puts in front of it (Python 3.11+ does not put it
    there under ``PYTHONSAFEPATH``, which the BEAM sets)."""
    if not getattr(sys.flags, "safe_path", False) and sys.path and sys.path[0] == os.getcwd():
        del sys.path[0]


def main() -> NoReturn:
    """Run the worker: ``python -m beambridge.worker``."""
    _safe_path()
    parent = os.getppid()
    in_fd, out_fd, log_fds = _take_stdio()
    _set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in iex is for the BEAM
    try:
        worker = Worker(in_fd, out_fd, log_fds, parent)
    except BaseException as exc:  # e.g. NumPy cannot be imported: say so over the channel
        why = str(exc) if isinstance(exc, control.OtherMajor) else traceback.format_exc()
        text = f"beambridge worker: cannot start:\n{why}"
        message = control.log(control.A_STDERR, text.encode("utf-8", "replace"))
        parts = control.join(message)
        data = b"".join(parts)
        with contextlib.suppress(OSError):
            os.write(out_fd, len(data).to_bytes(4, "big") + data)
        os._exit(1)
    signal.signal(signal.SIGTERM, worker.on_sigterm)
    worker.path.cancel.install()
    threading.Thread(target=worker.watchdog, name="beambridge-watchdog", daemon=True).start()
    threading.Thread(target=worker.forward_logs, name="beambridge-logs", daemon=True).start()
    try:
        worker.run()
    except BrokenPipeError:
        worker.exit(0)  # the BEAM closed fd 4: it is gone
    except SystemExit as exc:  # sys.exit() in a handler ends the worker
        worker.exit(exc.code if isinstance(exc.code, int) else 1)
    except BaseException:
        with contextlib.suppress(Exception):
            worker.log("crashed:\n" + traceback.format_exc())
        worker.exit(1)


if __name__ == "__main__":
    main()
