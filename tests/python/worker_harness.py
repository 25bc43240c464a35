"""The BEAM's half of the bridge, played from Python (protocol/SPEC.md).

`BeamSide` owns what the BEAM owns: arenas for argument slices (an `ArenaSet`) and a
lease table (a `SharedObject` of kind ``lease_table``). It announces them, lends
argument slices in calls, maps the worker's announced arenas and sealed objects with
`PeerObject`, reads result slices with a `Decoder`, and ends its leases on the worker's
slices by writing their generations into its lease table. It checks, as it goes, that
every slice it lent is reported released exactly once, and that an echoed slice is not
released by the answer that echoes it.

`WorkerProcess` starts the real worker (``python -m beambridge.worker``) with fds 3 and
4 wired to pipes and speaks the control protocol to it; `Loopback` puts a worker's
decoder and encoder in this process, for tests of the data terms without a process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from beambridge import control
from beambridge import stream_control as sc
from beambridge.arena import ArenaSet, Slice
from beambridge.decoder import Decoder
from beambridge.encoder import ResultEncoder
from beambridge.etf import Atom, decode, encode, encode_parts
from beambridge.header import Format, payload_offset_for
from beambridge.leases import Key, LeaseBook, PeerObjects
from beambridge.objects import KIND_LEASE_TABLE, OBJECT_HEADER, PAGE, PeerObject, SharedObject
from beambridge.result_slices import ResultSlices, WorkerArenas
from beambridge.terms import KIND_FORMATS, TAG_SLICE

HANDLERS = str(Path(__file__).parent / "handlers")
CALL, LOG, OK, ERROR = Atom("call"), Atom("log"), Atom("ok"), Atom("error")
TAG_BUFFER, TAG_TENSOR = Atom("$bb_buffer"), Atom("$bb_tensor")
MOD = Atom("bbtest_handlers")
BAD_CALL = Atom("bad_call")
MIB = 1 << 20


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HANDLERS, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(
        BEAMBRIDGE_WORKER_ID="test-worker", BEAMBRIDGE_MIN_ARENA=str(MIB), BEAMBRIDGE_PROTOCOL="2.2"
    )
    env.update(extra)
    return env


class BeamArg:
    """An argument the BEAM put in one of its slices; in a call it becomes a handle."""

    def __init__(self, kind: str, slice_: Slice) -> None:
        self.kind = Atom(kind)
        self.slice = slice_

    @property
    def key(self) -> Key:
        return (self.slice.object_id, self.slice.offset, self.slice.generation)

    def ref(self) -> tuple[int, int, int, int]:
        s = self.slice
        return (s.object_id, s.offset, s.length, s.generation)


class _BeamArenas(ArenaSet):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notices: list[Any] = []

    def on_new_arena(self, obj: SharedObject) -> None:
        self.notices.append(control.object_announcement(*obj.announcement()))

    def on_dropped_arena(self, object_id: int) -> None:
        self.notices.append(control.object_dropped(object_id))


class BeamSide:
    """What the BEAM owns and holds, and the bookkeeping of leases both ways."""

    def __init__(self, *, limit: int = 1 << 30, min_arena: int = MIB, tickets: int = 65536) -> None:
        self.arenas = _BeamArenas(limit=limit, min_arena=min_arena)
        size = -(-(OBJECT_HEADER + 8 * tickets) // PAGE) * PAGE
        self.table = SharedObject(size, KIND_LEASE_TABLE, tickets)
        self.arenas.notices.append(control.object_announcement(*self.table.announcement()))
        self.peers = PeerObjects()  # the worker's arenas and sealed objects
        self.leases = LeaseBook()  # the BEAM's leases on the worker's slices
        self.decoder = Decoder(self.peers, self.leases, verify=True)
        self.tickets: dict[Key, int] = {}  # worker slice read -> its ticket
        self.lent: dict[Key, Slice | None] = {}  # BEAM slices the worker holds
        self.released: list[Key] = []  # every release reported, in order
        self.echoes: list[tuple[Any, ...]] = []  # {:beam, ...} entries received
        self.objects: list[control.ObjectAnnouncement] = []  # the worker's, as announced
        self.dropped: list[int] = []  # the worker's arenas dropped
        self.unconfirmed: list[int] = []  # sealed objects mapped, not yet confirmed

    # ---- arguments -----------------------------------------------------------------

    def slice(
        self,
        kind: str,
        payload: Any,
        *,
        metadata: bytes = b"",
        format: Format | int | None = None,
        schema_id: int = 0,
        schema_version: int = 0,
    ) -> BeamArg:
        """Put ``payload`` in a new BEAM slice, to be passed as an argument of ``kind``."""
        fmt = KIND_FORMATS[Atom(kind)] if format is None else format
        s = self.arenas.put(
            payload,
            metadata=metadata,
            format=fmt,
            schema_id=schema_id,
            schema_version=schema_version,
        )
        return BeamArg(kind, s)

    def prepare(self, args: Any, extra: Sequence[BeamArg] = ()) -> tuple[Any, list[Any]]:
        """``args`` with every `BeamArg` replaced by its handle, and the call's
        ``slices`` (each BEAM slice once; ``extra`` ones no handle names)."""
        refs: list[tuple[int, int, int, int]] = []
        index: dict[Key, int] = {}

        def add(arg: BeamArg) -> int:
            if arg.key not in index:
                index[arg.key] = len(refs)
                refs.append(arg.ref())
                self.lent[arg.key] = arg.slice
            return index[arg.key]

        def walk(v: Any) -> Any:
            if isinstance(v, BeamArg):
                return (TAG_SLICE, v.kind, add(v))
            if type(v) is list:
                return [walk(x) for x in v]
            if type(v) is tuple:
                return tuple(walk(x) for x in v)
            if type(v) is dict:
                return {walk(k): walk(x) for k, x in v.items()}
            return v

        terms = walk(args)
        for arg in extra:
            add(arg)
        return terms, refs

    def on_released(self, keys: list[Key], echoed: Collection[Key] = ()) -> None:
        for key in keys:
            assert key not in echoed, f"slice {key} echoed and released by one answer"
            assert key in self.lent, f"slice {key} released twice, or never lent"
            s = self.lent.pop(key)
            self.released.append(key)
            if s is not None:
                self.arenas.free(s)

    def notices(self) -> list[Any]:
        out, self.arenas.notices = self.arenas.notices, []
        return out

    # ---- the worker's objects and results ------------------------------------------

    def on_object(self, message: control.ObjectAnnouncement) -> None:
        self.objects.append(message)
        self.peers.open(*message.args())
        if message.kind == "sealed":
            self.unconfirmed.append(message.object_id)

    def on_object_dropped(self, object_id: int) -> None:
        self.dropped.append(object_id)
        self.peers.drop(object_id)

    def read(self, term: Any, entries: list[Any]) -> Any:
        """The value of a result ``term`` whose handles name ``entries`` (an answer's
        ``slices``), as the BEAM would read it: ``{:beam, ...}`` entries from its own
        slices, the others from the worker's objects. Copied values end their leases
        at once; views keep them while they live."""
        refs: list[tuple[int, int, int, int]] = []
        remap: dict[int, Any] = {}
        for i, entry in enumerate(entries):
            owner = entry[0]
            if owner == control.A_BEAM:
                _, object_id, offset, generation, start, length = entry
                key = (object_id, offset, generation)
                held = self.lent.get(key)
                assert held is not None, f"echo of slice {key}, which the worker does not hold"
                with self.arenas.area(held) as area:
                    header_end = payload_offset_for(0)
                    assert start >= header_end and start + length <= area.nbytes, entry
                    remap[i] = bytes(area[start : start + length])
                self.echoes.append(entry)
                continue
            if owner == control.A_WORKER:
                _, object_id, offset, length, generation, ticket = entry
                self.tickets[(object_id, offset, generation)] = ticket
            else:
                _, object_id, offset, length, generation = entry
            remap[i] = len(refs)
            refs.append((object_id, offset, length, generation))

        def walk(v: Any) -> Any:
            if type(v) is tuple:
                if len(v) == 3 and v[0] == TAG_SLICE and type(v[2]) is int:
                    target = remap[v[2]]
                    return target if type(target) is bytes else (TAG_SLICE, v[1], target)
                return tuple(walk(x) for x in v)
            if type(v) is list:
                return [walk(x) for x in v]
            if type(v) is dict:
                return {walk(k): walk(x) for k, x in v.items()}
            return v

        value = self.decoder.decode(walk(term), refs)
        self.end_leases()
        return value

    def end_leases(self) -> None:
        """End the leases on worker slices nothing here reads any more (§4)."""
        for key in self.leases.take_released():
            ticket = self.tickets.pop(key, None)
            if ticket is not None:
                self.end_lease(ticket, key[2])

    def end_lease(self, ticket: int, generation: int) -> None:
        at = OBJECT_HEADER + 8 * ticket
        self.table.mm[at : at + 8] = generation.to_bytes(8, "little")

    def close(self) -> None:
        self.peers.close()
        self.arenas.close()
        self.table.close()


def control_pipes() -> tuple[int, int, Any]:
    """(our write end -> its fd 3, our read end <- its fd 4, preexec_fn placing them)."""
    r3, w3 = os.pipe()
    r4, w4 = os.pipe()

    def place() -> None:  # in the child: its ends become exactly fds 3 and 4
        a = fcntl.fcntl(r3, fcntl.F_DUPFD, 10)
        b = fcntl.fcntl(w4, fcntl.F_DUPFD, 10)
        os.dup2(a, 3)
        os.dup2(b, 4)
        os.close(a)
        os.close(b)

    return w3, r4, (place, r3, w4)


class WorkerProcess:
    """One worker process and the BEAM's end of its control channel.

    ``preexec`` runs in the child before it starts (after fds 3 and 4 are placed);
    ``beam`` sets the `BeamSide`'s bounds; ``confirm_sealed`` False keeps the worker's
    sealed objects unconfirmed (their descriptors stay open in the worker)."""

    def __init__(
        self,
        argv: list[str] | None = None,
        *,
        preexec: Callable[[], None] | None = None,
        beam: dict[str, int] | None = None,
        confirm_sealed: bool = True,
        **env: str,
    ) -> None:
        self.to_worker, self.from_worker, (place, r3, w4) = control_pipes()

        def child() -> None:
            place()
            if preexec is not None:
                preexec()

        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "beambridge.worker"],
            preexec_fn=child,
            close_fds=False,
            env=worker_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.close(r3)
        os.close(w4)
        self.beam = BeamSide(**(beam or {}))
        self.confirm_sealed = confirm_sealed
        self.buffer = b""
        self.logs: list[tuple[str, bytes]] = []
        self.fallbacks: list[tuple[bytes, bytes, int, int]] = []  # {:fallbacks, ...} entries
        self.next_id = 1
        #: Chunks of chunked result binaries by stream, taken and acknowledged as they
        #: come (unless ``ack_chunks`` is False: a test then plays the BEAM itself).
        self.chunks: dict[int, list[bytes]] = {}
        self.ack_chunks = True
        self.ready: Any = None
        self.answer: control.Answer | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> WorkerProcess:
        self.ready = self.recv()
        return self

    # ---- frames ----------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.to_worker, view) :]

    def send_frame(self, parts: list[Any]) -> None:
        data = b"".join(bytes(p) for p in parts)
        self.send_raw(len(data).to_bytes(4, "big") + data)

    def send(self, envelope: Any, body: Any = None, *, raw_body: bytes | None = None) -> None:
        """One frame: ``envelope`` and, when given, ``body`` (a term) or ``raw_body``."""
        parts = None if body is None else encode_parts(body)
        if raw_body is not None:
            parts = [raw_body]
        self.send_frame(control.join(envelope, parts))

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

    def recv_frame(self, timeout: float = 30.0) -> tuple[Any, memoryview | None]:
        """The next frame's ``(envelope, body)``; EOFError when the worker closed fd 4."""
        deadline = time.monotonic() + timeout
        if not self._fill(4, deadline):
            raise EOFError
        n = int.from_bytes(self.buffer[:4], "big")
        if not self._fill(4 + n, deadline):
            raise EOFError
        frame, self.buffer = self.buffer[4 : 4 + n], self.buffer[4 + n :]
        return control.split(frame)

    def recv_any(self, timeout: float = 30.0) -> Any:
        """The next message, after the BEAM side has acted on it (an answer's body, a
        term, is in ``self.body``)."""
        envelope, body = self.recv_frame(timeout)
        message = control.from_worker(envelope, body is not None)
        if isinstance(message, control.Log):
            self.logs.append((message.stream, message.data))
        elif isinstance(message, control.ObjectAnnouncement):
            self.beam.on_object(message)
        elif isinstance(message, control.ObjectDropped):
            self.beam.on_object_dropped(message.object_id)
        elif isinstance(message, control.Released):
            self.beam.on_released(message.entries)
        elif isinstance(message, control.Fallbacks):
            self.fallbacks.extend(message.entries)
        elif isinstance(message, sc.Element):
            self.body = decode(body)
            self.raw_body = bytes(body) if body is not None else b""
            if message.sid > 0 and self.ack_chunks:  # a chunk of a result binary (§8.6)
                chunk = self.beam.read(self.body, message.slices)
                self.chunks.setdefault(message.sid, []).append(bytes(chunk))
                self.send(sc.ack(message.call_id, message.sid, message.seq))
        elif isinstance(message, control.Answer):
            self.body = None if body is None else decode(body)
            echoed = {(e[1], e[2], e[3]) for e in message.slices if e[0] == control.A_BEAM}
            self.beam.on_released(message.released, echoed)
            self.answer = message
        return message

    def recv(self, timeout: float = 30.0) -> Any:
        """The next answer (or the ready message); other messages are acted on."""
        while True:
            message = self.recv_any(timeout)
            if isinstance(message, (control.Answer, control.Ready)):
                return message

    def wait_for(self, what: Callable[[], bool], timeout: float = 10.0) -> None:
        """Act on the worker's messages until ``what()`` holds."""
        deadline = time.monotonic() + timeout
        while not what():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"still waiting; logs: {self.logs!r:.2000}")
            with contextlib.suppress(TimeoutError):
                self.recv_any(min(left, 0.2))

    def log_text(self, stream: str) -> bytes:
        return b"".join(data for s, data in self.logs if s == stream)

    # ---- calls -----------------------------------------------------------------------

    def flush(self) -> None:
        """Before a call: end leases nothing reads, confirm sealed objects, announce
        new BEAM objects."""
        self.beam.end_leases()
        if self.confirm_sealed and self.beam.unconfirmed:
            self.send(control.sealed_mapped(self.beam.unconfirmed))
            self.beam.unconfirmed = []
        for notice in self.beam.notices():
            self.send(notice)

    def call(
        self,
        function: str,
        *args: Any,
        module: Any = MOD,
        opts: Any = None,
        extra: Sequence[BeamArg] = (),
        call_id: int | None = None,
    ) -> tuple[str, Any]:
        """Send a call; return ``("ok", result term)`` or ``("error", error)``. The
        result's handles are left as they are: `read` resolves them."""
        terms, refs = self.beam.prepare(list(args), extra)
        self.flush()
        if call_id is None:
            call_id = self.next_id
            self.next_id += 1
        self.send(control.call(call_id, module, Atom(function), opts or {}, refs), terms)
        answer = self.recv()
        assert isinstance(answer, control.Answer), answer
        assert answer.call_id == call_id, f"answer {answer!r:.200} for call {call_id}"
        return ("ok", self.body) if answer.ok else ("error", answer.error)

    def ok(self, function: str, *args: Any, **kw: Any) -> Any:
        status, value = self.call(function, *args, **kw)
        assert status == "ok", value
        return value

    def read(self, term: Any) -> Any:
        """Resolve the handles of the last answer's result ``term``."""
        assert self.answer is not None
        return self.beam.read(term, self.answer.slices)

    def value(self, function: str, *args: Any, **kw: Any) -> Any:
        """`ok`, then `read`."""
        return self.read(self.ok(function, *args, **kw))

    def entry(self, handle: Any) -> tuple[Any, ...]:
        """The last answer's ``slices`` entry a result handle names."""
        assert self.answer is not None and handle[0] == TAG_SLICE, handle
        entry: tuple[Any, ...] = self.answer.slices[handle[2]]
        return entry

    # ---- the end -----------------------------------------------------------------------

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

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
        self.beam.close()


@contextlib.contextmanager
def running(**kw: Any) -> Iterator[WorkerProcess]:
    """A started worker, stopped (and checked to exit 0) at the end."""
    w = WorkerProcess(**kw).start()
    try:
        yield w
    finally:
        status = w.stop()
    assert status == 0, status


class Loopback:
    """A worker's decoder and encoder in this process, with the BEAM side beside them:
    results go through real slices (and sealed objects) and are read back as the BEAM
    reads them; arguments come from real BEAM slices."""

    def __init__(
        self,
        threshold: int = 1 << 16,
        *,
        sealed: bool = False,
        limit: int = 1 << 30,
        min_arena: int = MIB,
        tickets: int = 4096,
        verify: bool = True,
        policy: str = "auto",
    ) -> None:
        self.beam = BeamSide(tickets=tickets)
        self.peers = PeerObjects()  # the worker's map of the BEAM's arenas
        self.leases = LeaseBook()
        self.decoder = Decoder(self.peers, self.leases, verify=verify)
        arenas = None if sealed else WorkerArenas(limit=limit, min_arena=min_arena, checksum=verify)
        self.slices = ResultSlices(
            arenas, limit=limit, sealed=sealed, leases=self.leases, checksum=verify
        )
        self.encoder = ResultEncoder(self.slices, threshold, policy=policy)
        self.entries: list[Any] = []
        self._beam_notices()

    def _beam_notices(self) -> None:
        for notice in self.beam.notices():
            message = control.from_beam(notice, False)
            if isinstance(message, control.ObjectAnnouncement):
                if message.kind == "lease_table":
                    table = PeerObject.open(*message.args())
                    if self.slices.arenas is not None:
                        self.slices.arenas.set_lease_table(table)
                else:
                    self.peers.open(*message.args())
            elif isinstance(message, control.ObjectDropped):
                self.peers.drop(message.object_id)

    def result(self, value: Any, **encoder: Any) -> Any:
        """The term ``value`` becomes as a result (handles into ``self.entries``)."""
        for name, v in encoder.items():
            setattr(self.encoder, name, v)
        self.beam.end_leases()
        self.slices.begin()
        try:
            body = b"".join(encode_parts(value, self.encoder))
        except BaseException:
            self.slices.cancel()
            raise
        notices = self.slices.take_notices() + self.slices.commit()
        for notice in notices:
            message = control.from_worker(notice, False)
            if isinstance(message, control.ObjectAnnouncement):
                self.beam.on_object(message)
            elif isinstance(message, control.ObjectDropped):
                self.beam.on_object_dropped(message.object_id)
        self.entries = list(self.slices.entries)
        self.slices.sealed_mapped(self.beam.unconfirmed)
        self.beam.unconfirmed = []
        return decode(body)

    def back(self, term: Any) -> Any:
        """Read a result term as the BEAM does."""
        return self.beam.read(term, self.entries)

    def round_trip(self, value: Any, **encoder: Any) -> Any:
        return self.back(self.result(value, **encoder))

    def argument(self, args: Any, extra: Sequence[BeamArg] = ()) -> Any:
        """What a handler gets for ``args`` (`BeamArg` in it become slice handles)."""
        terms, refs = self.beam.prepare(args, extra)
        self._beam_notices()
        try:
            return self.decoder.decode(decode(encode(terms)), refs)
        finally:
            self.settle()

    def settle(self) -> None:
        """Report the BEAM slices let go to the BEAM side."""
        self.slices.unpin()
        self.beam.on_released(self.leases.take_released())

    def close(self) -> None:
        self.settle()
        self.slices.close()
        self.peers.close()
        self.beam.close()
