"""The worker's control channel from the BEAM (protocol/SPEC.md §8.1, §8.5): frames on
fd 3 (a ``{packet, 4}`` length, then that many bytes), polled for a while after an
answer so that the next call is read without a wake-up, and the lane looked at as the
pipe is: a call waiting there is returned as `LaneRing` (the class)."""

from __future__ import annotations

import os
import select
import time

from .control import MAX_CONTROL_FRAME, LaneRing, ProtocolError
from .lane import Lane

__all__ = ["LOG_CHUNK", "Channel"]

#: Bytes read from a pipe at a time.
LOG_CHUNK = 65536
#: Milliseconds of the first wait after the lane is marked asleep (SPEC §8.5).
_SLEEP_RECHECK_MS = 1


class Channel:
    """Frames from fd 3: a ``{packet, 4}`` length, then that many bytes.

    >>> r, w = os.pipe()
    >>> channel = Channel(r)
    >>> os.write(w, b"\\x00\\x00\\x00\\x02hi\\x00\\x00\\x00\\x01!")
    11
    >>> bytes(channel.read(1.0)), bytes(channel.read(1.0)), channel.read(0.01)
    (b'hi', b'!', None)
    >>> os.close(w)
    >>> channel.read(1.0)
    Traceback (most recent call last):
    EOFError
    >>> os.close(r)
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = bytearray()
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    def read(
        self, timeout: float, spin: float = 0.0, lane: Lane | None = None
    ) -> bytes | bytearray | type[LaneRing] | None:
        """The next frame; None when nothing arrived for ``timeout`` seconds; `LaneRing`
        (the class) when a call waits in ``lane`` and nothing on the pipe comes before
        it. EOFError at the end of the channel; `ProtocolError` for a frame over the
        limit.

        ``spin``: seconds to keep polling before blocking, so that a frame the BEAM
        sends right away (the next call of a busy caller) is read without this process
        going to sleep and being woken, which costs tens of microseconds on a
        virtual CPU. The loop yields the CPU to anything else runnable on it."""
        if not self.pending:
            readable = spin > 0.0 and self._spin(spin, lane)
            if readable is LaneRing:
                return LaneRing
            if not readable:
                if lane is not None:
                    return self._sleep(timeout, lane)
                if not self.poller.poll(int(timeout * 1000)):
                    return None
            # most frames arrive whole in one read: cut the frame out of it
            chunk = os.read(self.fd, LOG_CHUNK)
            if not chunk:
                raise EOFError
            end = 4 + int.from_bytes(chunk[:4], "big")
            if len(chunk) < 4 or end > len(chunk):
                self.pending += chunk  # the general path below waits for the rest
            else:
                self.pending += chunk[end:]
                return chunk[4:end]
        length = int.from_bytes(self._take(4), "big")
        if length > MAX_CONTROL_FRAME:
            raise ProtocolError(
                "bad_term",
                "length",
                length,
                MAX_CONTROL_FRAME,
                f"a control frame of {length} bytes, over the limit of {MAX_CONTROL_FRAME} "
                "(MAX_CONTROL_FRAME)",
            )
        return self._take(length)

    def _spin(self, seconds: float, lane: Lane | None) -> bool | type[LaneRing]:
        """Poll without blocking for up to ``seconds``; True when a frame is readable,
        `LaneRing` when a call waits in the lane (the pipe first: what the BEAM wrote
        there came before)."""
        poll, clock, yield_cpu = self.poller.poll, time.perf_counter, os.sched_yield
        waiting = lane.pending if lane is not None else bool
        end = clock() + seconds
        while True:
            if poll(0):
                return True
            if waiting():
                return LaneRing
            if clock() >= end:
                return False
            yield_cpu()

    def _sleep(self, timeout: float, lane: Lane) -> bytes | bytearray | type[LaneRing] | None:
        """Block on the pipe with the lane marked asleep. The BEAM may publish a call
        just as the mark is made and miss it (SPEC §8.5): the first wait is short, and
        the lane is looked at again after it."""
        if not lane.sleep():
            return LaneRing
        readable = self.poller.poll(_SLEEP_RECHECK_MS)
        if not readable and not lane.pending():
            readable = self.poller.poll(int(timeout * 1000))
        lane.wake()
        if readable:
            return self.read(0.0)
        return LaneRing if lane.pending() else None

    def _take(self, n: int) -> bytearray:
        buf = bytearray(n)
        have = min(n, len(self.pending))
        buf[:have] = self.pending[:have]
        del self.pending[:have]
        with memoryview(buf) as view:
            while have < n:
                if n - have >= LOG_CHUNK:  # big: straight into the frame
                    got = os.readv(self.fd, [view[have:]])
                else:
                    chunk = os.read(self.fd, LOG_CHUNK)
                    got = min(len(chunk), n - have)
                    view[have : have + got] = chunk[:got]
                    self.pending += chunk[got:]
                if got == 0:
                    raise EOFError
                have += got
        return buf
