"""The Python worker: ``python -m beambridge.worker`` (protocol/SPEC.md §7).

Started by ``Bridge.Worker`` through a Port. Control frames (4-byte big-endian length +
one ETF term) arrive on fd 3 and leave on fd 4. Before anything else the worker points
fds 1 and 2 at pipes of its own and forwards what arrives there as
``{:log, :stdout | :stderr, data}``, so nothing a handler prints can corrupt a frame.

Messages (§7.3)::

    BEAM -> worker   {:call, id, module, function, args}
                     | {:call, id, module, function, args, opts} | {:detach, [name]}
                     | :shutdown
    worker -> BEAM   {:ready, os_pid, {1, 0}} | {:ok, id, result}
                     | {:error, id, {:python_exception, type, message, traceback}}
                     | {:error, id, {:bad_call, reason, message}} | {:log, stream, data}

``opts`` is a map of call options with binary keys; ``"format"`` (``"auto"``, ``"etf"``,
``"packed"`` or ``"arrow"``) is the format policy of the result (§8.1); other keys are
ignored.

Environment: ``BEAMBRIDGE_WORKER_ID`` (in the worker's own log lines),
``BEAMBRIDGE_SHM_PREFIX`` (default ``bb``), ``BEAMBRIDGE_THRESHOLD`` (bytes, default
65536), ``BEAMBRIDGE_REGION_LIMIT`` (bytes, default 1 GiB), ``BEAMBRIDGE_VERIFY``
(``1`` checksums result payloads and verifies argument payloads; default ``0``, as on
the BEAM side).

Exit status: 0 after EOF on fd 3, ``:shutdown``, SIGTERM or the parent's death (all
leave no region of the worker's behind); 3 on a protocol violation (a frame over
`MAX_CONTROL_FRAME`, or one that is not a message of §7.3); 2 when fds 3/4 are missing
or ``BEAMBRIDGE_SHM_PREFIX`` is invalid; 1 when the worker cannot start (the reason is
sent as a ``log`` frame first) or crashes; a handler's ``sys.exit(n)`` exits with ``n``
after the same cleanup.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

# Only what the fd juggling in main() needs is imported up front; NumPy (through
# .convert) comes after fds 1 and 2 point at the log pipes, so even its import-time
# warnings reach the BEAM's Logger.
from .control import check_prefix
from .errors import BridgeError, EtfError
from .etf import Atom, decode, encode_parts
from .reaper import _is_zombie, reap_stale

__all__ = ["MAX_CONTROL_FRAME", "PROTOCOL_VERSION", "main"]

#: Largest control frame either side accepts (§7.1); a longer one ends the worker (3).
MAX_CONTROL_FRAME = 64 * 1024 * 1024
PROTOCOL_VERSION = (1, 0)
EXIT_PROTOCOL = 3

_IN_FD, _OUT_FD = 3, 4
_LOG_CHUNK = 65536
_WATCHDOG_PERIOD = 0.1
_PR_SET_PDEATHSIG = 1

A_CALL, A_OK, A_ERROR, A_READY, A_LOG = (Atom(a) for a in ("call", "ok", "error", "ready", "log"))
A_DETACH, A_SHUTDOWN = Atom("detach"), Atom("shutdown")
A_STDOUT, A_STDERR = Atom("stdout"), Atom("stderr")
A_PYTHON_EXCEPTION, A_BAD_CALL = Atom("python_exception"), Atom("bad_call")
A_NO_MODULE, A_NO_FUNCTION, A_BAD_TERM = Atom("no_module"), Atom("no_function"), Atom("bad_term")

#: Reasons a ``bad_call`` may carry (§4, §5, §7.3): atoms the BEAM is sure to know.
#: Anything else (an errno name from an attach) goes as ``badarg``, named in the message.
_REASONS = """truncated_header bad_magic unsupported_version bad_header_size unknown_format
    unknown_codec unknown_flags metadata_too_large metadata_out_of_bounds misaligned_payload
    payload_overlaps_metadata length_overflow payload_out_of_bounds bad_decoded_length
    decoded_too_large header_checksum_mismatch checksum_mismatch stale_generation no_space
    name_collision not_found bad_name bad_permissions region_too_small bad_control_block
    out_of_bounds closed not_owner region_too_large badarg leased not_published busy
    no_module no_function bad_term bad_metadata unknown_type codec_failed format_unsuitable"""
KNOWN_REASONS = frozenset(_REASONS.split())


class _BadCall(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason if reason in KNOWN_REASONS else "badarg"
        self.message = message


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw.strip() else default
    except ValueError:
        value = default
    return value if value >= 0 else default


def _exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    name = cls.__qualname__
    return name if module in ("builtins", "__main__") else f"{module}.{name}"


def _text(value: object) -> bytes:
    try:
        text = str(value)
    except Exception as exc:  # a __str__ that raises
        text = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    return text.encode("utf-8", "backslashreplace")


class Worker:
    """One worker process: the control loop, the log pipes and the region pools."""

    def __init__(self, in_fd: int, out_fd: int, log_fds: dict[int, Atom], parent: int) -> None:
        from .convert import (
            DEFAULT_REGION_LIMIT,
            DEFAULT_THRESHOLD,
            Arguments,
            Attachments,
            ResultEncoder,
            ResultRegions,
        )

        self.in_fd = in_fd
        self.out_fd = out_fd
        self.reader = os.fdopen(in_fd, "rb", buffering=_LOG_CHUNK, closefd=False)
        self.lock = threading.Lock()  # one writer of fd 4 at a time; logs drained under it
        self.log_fds = log_fds
        self.poller = select.poll()
        for fd in log_fds:
            self.poller.register(fd, select.POLLIN)
        self.worker_id = os.environ.get("BEAMBRIDGE_WORKER_ID", str(os.getpid()))
        self.prefix = os.environ.get("BEAMBRIDGE_SHM_PREFIX", "bb") or "bb"
        self.threshold = _env_int("BEAMBRIDGE_THRESHOLD", DEFAULT_THRESHOLD)
        limit = _env_int("BEAMBRIDGE_REGION_LIMIT", DEFAULT_REGION_LIMIT)
        verify = os.environ.get("BEAMBRIDGE_VERIFY", "0").strip() not in ("0", "false", "no")
        self.attachments = Attachments()
        self.arguments = Arguments(self.attachments, verify=verify)
        self.results = ResultRegions(self.prefix, limit, checksum=verify)
        self.encoder = ResultEncoder(self.results, self.threshold)
        self.functions: dict[tuple[Any, Any], Callable[..., Any]] = {}
        self.parent = parent  # the BEAM, or OTP's erl_child_setup that spawned us for it
        # Who to wait for before reaping the BEAM's regions (§7.5): the parent, and the
        # grandparent when the parent is OTP's erl_child_setup. Decided now, while the
        # parent is alive: once it has died, /proc no longer says what it was.
        self.beam_pids = [parent]
        grandparent = _ppid_of(parent)
        if _comm(parent).startswith("erl_child_setup") and grandparent > 1:
            self.beam_pids.append(grandparent)
        self.exiting = False

    # ---- output ------------------------------------------------------------------------

    def _write(self, body: bytes) -> None:
        """Write one frame: the 4-byte length, then ``body``. Caller holds the lock."""
        head = len(body).to_bytes(4, "big")
        if len(body) < _LOG_CHUNK:
            self._write_all(head + body)
        else:
            self._write_all(head)
            self._write_all(body)

    def _write_all(self, data: bytes) -> None:
        n = os.write(self.out_fd, data)
        if n < len(data):
            view = memoryview(data)[n:]
            while view:
                view = view[os.write(self.out_fd, view) :]

    def send(self, term: Any) -> None:
        """Encode and write one frame (logs pending on the pipes go first)."""
        body = b"".join(encode_parts(term))
        with self.lock:
            self._drain_locked()
            self._write(body)

    def log(self, text: str) -> None:
        """A line of the worker's own, as ``{:log, :stderr, data}``."""
        data = f"beambridge worker {self.worker_id}: {text}\n".encode("utf-8", "backslashreplace")
        with contextlib.suppress(OSError):
            self.send((A_LOG, A_STDERR, data))

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
                self._write(b"".join(encode_parts((A_LOG, stream, data))))

    def forward_logs(self) -> None:
        """Thread body: forward what handlers write to fds 1 and 2 as it comes."""
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
        """Flush logs, unlink every result region, and leave at once."""
        if not self.exiting:
            self.exiting = True
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            with contextlib.suppress(Exception):
                if self.lock.acquire(timeout=1.0):
                    self._drain_locked()
            self.results.unlink_all()
        os._exit(status)

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # runs in the main thread between bytecodes: no lock, no frames, just cleanup
        self.results.unlink_all()
        if os.getppid() != self.parent:
            self.reap_after_parent_death()
        os._exit(0)

    def on_eof(self) -> NoReturn:
        """EOF on fd 3 without a ``:shutdown`` first: the BEAM closed the Port in a hurry
        or died (a killed process's fds close before its pid goes away, so this usually
        comes before the watchdog notices). Either way the BEAM's regions may now have a
        dead owner: reap them (§7.5), which leaves a live BEAM's regions alone."""
        self.results.unlink_all()
        self.reap_after_parent_death()
        self.exit(0)

    def watchdog(self) -> None:
        """Thread body: every 100 ms, has the parent (the BEAM's spawner) died?"""
        while True:
            time.sleep(_WATCHDOG_PERIOD)
            if os.getppid() != self.parent:
                self.results.unlink_all()
                self.reap_after_parent_death()
                os._exit(0)

    def reap_after_parent_death(self) -> None:
        """Unlink the dead BEAM's regions (§7.5). The BEAM is the parent, or the
        grandparent when the parent is OTP's ``erl_child_setup``; wait (at most 1.5 s)
        until each has exited, so the reaper sees a dead owner."""
        pids = self.beam_pids
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not all(_gone(p) for p in pids):
            time.sleep(0.02)
        with contextlib.suppress(Exception):
            reap_stale(self.prefix)

    # ---- the loop ----------------------------------------------------------------------

    def read_frame(self) -> bytes | None:
        head = self.reader.read(4)
        if len(head) < 4:
            return None
        length = int.from_bytes(head, "big")
        if length > MAX_CONTROL_FRAME:
            self.log(
                f"protocol violation: a control frame of {length} bytes, over the limit of "
                f"{MAX_CONTROL_FRAME} (MAX_CONTROL_FRAME); exiting with status {EXIT_PROTOCOL}"
            )
            self.exit(EXIT_PROTOCOL)
        body = self.reader.read(length)
        return body if len(body) == length else None

    def run(self) -> NoReturn:
        self.send((A_READY, os.getpid(), PROTOCOL_VERSION))
        while True:
            frame = self.read_frame()
            if frame is None:
                self.on_eof()
            try:
                message = decode(frame)
            except EtfError as err:
                call_id = _peek_call_id(frame)
                if call_id is None:
                    self.violation(f"an undecodable control frame: {err}")
                self.reply_bad_call(call_id, _BadCall("bad_term", f"the call frame: {err}"))
                continue
            if type(message) is tuple and len(message) in (5, 6) and message[0] == A_CALL:
                self.call(message)
            elif type(message) is tuple and len(message) == 2 and message[0] == A_DETACH:
                if type(message[1]) is list:
                    self.attachments.detach(message[1])
                else:
                    self.violation(f"a detach message without a list: {message!r:.200}")
            elif message == A_SHUTDOWN:
                self.exit(0)
            else:
                self.violation(f"an unknown control message: {message!r:.200}")

    def violation(self, what: str) -> NoReturn:
        self.log(f"protocol violation: {what}; exiting with status {EXIT_PROTOCOL}")
        self.exit(EXIT_PROTOCOL)

    def lookup(self, module: Any, function: Any) -> Callable[..., Any]:
        key = (module, function)
        cached = self.functions.get(key)
        if cached is not None:
            return cached
        module_name, function_name = _name(module), _name(function)
        if module_name is None or function_name is None:
            raise _BadCall("bad_term", f"module and function must be atoms or binaries, "
                           f"got {module!r:.100} and {function!r:.100}")  # fmt: skip
        try:
            mod = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name or module_name.startswith(f"{exc.name}."):
                raise _BadCall("no_module", f"cannot import module {module_name!r}: {exc} "
                               f"(sys.path: {sys.path})") from None  # fmt: skip
            raise _BadCall("no_module", f"importing module {module_name!r} failed:\n"
                           + traceback.format_exc()) from None  # fmt: skip
        except Exception:
            raise _BadCall("no_module", f"importing module {module_name!r} failed:\n"
                           + traceback.format_exc()) from None  # fmt: skip
        fn: Callable[..., Any] | None = getattr(mod, function_name, None)
        if fn is None or not callable(fn):
            what = "no attribute" if fn is None else f"a non-callable {type(fn).__name__}"
            raise _BadCall("no_function", f"module {module_name!r} has {what} "
                           f"{function_name!r}")  # fmt: skip
        self.functions[key] = fn
        return fn

    def call(self, message: tuple[Any, ...]) -> None:
        _, call_id, module, function, args = message[:5]
        if type(call_id) is not int or call_id <= 0:
            self.violation(f"a call id that is not a positive integer: {call_id!r:.100}")
        try:
            policy = _policy(message[5]) if len(message) == 6 else "auto"
            fn = self.lookup(module, function)
            if type(args) is not list:
                raise _BadCall("bad_term", f"args must be a list, got {args!r:.200}")
            try:
                args = self.arguments.convert(args)
            except BridgeError as err:
                raise _BadCall(err.reason, f"argument: {err}") from None
            except Exception as err:
                raise _BadCall("badarg", f"argument: {type(err).__name__}: {err}") from None
        except _BadCall as bad:
            self.reply_bad_call(call_id, bad)
            return
        reply: Any = None
        try:
            result = fn(*args)
        except Exception as exc:
            tb = exc.__traceback__
            text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))
            reply = (A_ERROR, call_id, (A_PYTHON_EXCEPTION, _exception_type_name(exc).encode(),
                     _text(exc), text.encode("utf-8", "backslashreplace")))  # fmt: skip
            if tb is not None:
                traceback.clear_frames(tb)  # the handler's locals (argument views) go now
            del tb
        if reply is not None:
            del args
            self.flush_handler_output()
            self.send(reply)
            return
        del args  # the worker's references to argument views end here (leases, §7.4)
        self.flush_handler_output()
        self.results.begin_result()
        self.encoder.policy = policy
        try:
            parts = encode_parts((A_OK, call_id, result), self.encoder)
        except (TypeError, ValueError) as exc:
            del result
            # format_unsuitable (a forced format) goes as itself; the rest as bad_term
            reason = getattr(exc, "reason", None) if isinstance(exc, BridgeError) else None
            reason = reason if reason in KNOWN_REASONS else "bad_term"
            self.reply_bad_call(call_id, _BadCall(reason, f"the result: {exc}"))
            return
        del result
        body = b"".join(parts)
        del parts
        if len(body) > MAX_CONTROL_FRAME:
            size = len(body)
            del body
            self.reply_bad_call(call_id, _BadCall("bad_term", (
                f"the result encodes to {size} bytes inline, over the control frame limit "
                f"of {MAX_CONTROL_FRAME}, and no result region could take it "
                f"(BEAMBRIDGE_REGION_LIMIT {self.results.limit})")))  # fmt: skip
            return
        with self.lock:
            self._drain_locked()
            self._write(body)

    def reply_bad_call(self, call_id: int, bad: _BadCall) -> None:
        self.send((A_ERROR, call_id, (A_BAD_CALL, Atom(bad.reason), _text(bad.message))))

    def flush_handler_output(self) -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()


def _name(value: Any) -> str | None:
    if isinstance(value, str):
        return str(value)
    if type(value) is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


_FORMATS = {"auto", "etf", "packed", "arrow"}  # beambridge.convert.POLICIES


def _policy(opts: Any) -> str:
    """The result format policy of a call's options (§7.3): ``opts["format"]``."""
    if type(opts) is not dict:
        raise _BadCall("bad_term", f"call options must be a map, got {opts!r:.200}")
    value = opts.get(b"format", "auto")
    text = value.decode("utf-8", "replace") if type(value) is bytes else value
    if not isinstance(text, str) or text not in _FORMATS:
        raise _BadCall("bad_term", f"call option format is {value!r:.100}, not one of "
                       "auto, etf, packed, arrow")  # fmt: skip
    return str(text)


def _peek_call_id(frame: bytes) -> int | None:
    """The id of a call frame whose arguments did not decode, or None: ``131, 104, 5``
    (or 6, with call options), the atom ``call``, then a small integer or INTEGER id."""
    prefixes = [b"\x83h" + bytes((n,)) + atom for n in (5, 6)
                for atom in (b"w\x04call", b"d\x00\x04call")]  # fmt: skip
    for p in prefixes:
        if frame.startswith(p):
            rest = frame[len(p) :]
            if rest[:1] == b"a" and len(rest) >= 2:
                return rest[1] or None
            if rest[:1] == b"b" and len(rest) >= 5:
                value = int.from_bytes(rest[1:5], "big", signed=True)
                return value if value > 0 else None
    return None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _ppid_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
        return int(stat_line[stat_line.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


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
    for target, stream in ((1, A_STDOUT), (2, A_STDERR)):
        r, w = os.pipe()
        os.dup2(w, target)
        os.close(w)
        os.set_blocking(r, False)
        log_fds[r] = stream
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            f.reconfigure(line_buffering=True, write_through=False, errors="backslashreplace")  # type: ignore[union-attr]
    return in_fd, out_fd, log_fds


def main() -> NoReturn:
    """Run the worker: ``python -m beambridge.worker``."""
    parent = os.getppid()
    in_fd, out_fd, log_fds = _take_stdio()
    _set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in iex is for the BEAM
    try:
        worker = Worker(in_fd, out_fd, log_fds, parent)
    except BaseException:  # e.g. NumPy cannot be imported: say so over the channel
        text = f"beambridge worker: cannot start:\n{traceback.format_exc()}"
        body = b"".join(encode_parts((A_LOG, A_STDERR, text.encode("utf-8", "replace"))))
        with contextlib.suppress(OSError):
            os.write(out_fd, len(body).to_bytes(4, "big") + body)
        os._exit(1)
    try:
        check_prefix(worker.prefix)
    except ValueError as exc:
        worker.log(f"BEAMBRIDGE_SHM_PREFIX: {exc}")
        worker.exit(2)
    signal.signal(signal.SIGTERM, worker.on_sigterm)
    threading.Thread(target=worker.watchdog, name="beambridge-watchdog", daemon=True).start()
    threading.Thread(target=worker.forward_logs, name="beambridge-logs", daemon=True).start()
    with contextlib.suppress(Exception):
        reap_stale(worker.prefix)  # §1.5: regions of dead owners, at start
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
