"""How long the worker polls for the next call (protocol/SPEC.md §8.4, §8.5).

After an answer the worker polls for ``base`` seconds before it blocks on its pipe. A
caller that calls again at once is then served without a wake-up; one whose next call
comes a little later than that (a call with slices has more to do on the BEAM between
two calls) would miss it every time. So the poll stretches to cover the gap the last
call came after, with a margin, up to `STRETCH` times ``base``; a gap longer than that
puts it back to ``base``: polling only pays when the next call comes soon.

>>> spin = Spin(50e-6)
>>> spin.current == 50e-6
True
>>> spin.after_gap(80e-6); round(spin.current * 1e6)
120
>>> spin.after_gap(10e-6); round(spin.current * 1e6)
50
>>> spin.after_gap(1.0); round(spin.current * 1e6)
50
"""

from __future__ import annotations

import time

from .cpus import usable_cpus

__all__ = ["DEFAULT_SPIN_US", "MARGIN", "STRETCH", "Spin", "spin_seconds"]

#: Microseconds the worker polls for the next call after an answer (more than one CPU).
DEFAULT_SPIN_US = 50

#: The longest poll, as a multiple of the base.
STRETCH = 4
#: How much longer than the last gap the poll lasts.
MARGIN = 1.5


class Spin:
    """The current poll length, from the gaps between an answer and the next call."""

    def __init__(self, base: float) -> None:
        self.base = base
        self.current = base
        self._answered = 0.0

    def answered(self) -> None:
        """An answer went out now."""
        self._answered = time.perf_counter()

    def call_came(self) -> None:
        """A call arrived now (after the last answer, if any)."""
        if self._answered:
            self.after_gap(time.perf_counter() - self._answered)
            self._answered = 0.0

    def after_gap(self, gap: float) -> None:
        cap = self.base * STRETCH
        self.current = self.base if gap > cap else min(cap, max(self.base, gap * MARGIN))


def spin_seconds(setting: str | None) -> float:
    """How long the worker polls for the next call after an answer before it blocks:
    ``BEAMBRIDGE_SPIN_US`` microseconds, else `DEFAULT_SPIN_US` when this process may
    use more than one CPU (`beambridge.cpus.usable_cpus`: its affinity and its cgroup's
    CPU quota) and 0 when it may not (polling there would only keep the BEAM from the
    CPU it needs to send that call).

    >>> spin_seconds("20")
    2e-05
    >>> spin_seconds("0")
    0.0
    >>> spin_seconds("soon") == spin_seconds(None)  # not a number: the default
    True
    """
    if setting is not None and setting.strip().isdigit():
        return int(setting) / 1e6
    return DEFAULT_SPIN_US / 1e6 if usable_cpus() > 1 else 0.0
