"""Handlers of bridge_session_test.exs: objects a worker keeps for a session."""

import gc
import os
import weakref

import beambridge

LIVE = weakref.WeakSet()  # every Counter not yet freed
STATE = {}  # module state a session's calls share


class Counter:
    def __init__(self, start):
        self.n = start
        LIVE.add(self)


def new_counter(start=0):
    return beambridge.keep(Counter(start))


def incr(counter):
    counter.n += 1
    return counter.n


def value(counter):
    return counter.n


def pair(start):
    """Two kept objects and a plain value in one result."""
    return {
        "a": beambridge.keep(Counter(start)),
        "b": beambridge.keep(Counter(start + 1)),
        "n": start,
    }


def remember(key, value):
    STATE[key] = value
    return os.getpid()


def recall(key):
    return [STATE.get(key), os.getpid()]


def live():
    """Counters still alive in this worker (after a collection)."""
    gc.collect()
    return len(LIVE)


def is_counter(obj):
    return type(obj).__name__


def die():
    os._exit(9)


def nap(seconds):
    import time

    time.sleep(seconds)
    return "woke"
