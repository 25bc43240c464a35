"""Handlers of bridge_cancel_test.exs: module state a cancelled call must leave as it
was, handlers that unwind, and handlers that cannot be interrupted."""

import asyncio
import os
import time

COUNT = 0
CLEANED = []  # what the `finally` blocks of cancelled handlers saw


def bump():
    """The module's counter, one more: its state survives cancelled calls."""
    global COUNT
    COUNT += 1
    return COUNT


def state():
    return [os.getpid(), COUNT, list(CLEANED)]


def nap(seconds, tag):
    """Sleeps in Python (a blocking system call the cancel signal interrupts)."""
    try:
        time.sleep(seconds)
        return tag
    finally:
        CLEANED.append(tag)


def spin(seconds, tag):
    """Busy in bytecode: interrupted between two of them."""
    try:
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
        return tag
    finally:
        CLEANED.append(tag)


def in_c(n):
    """C code that holds the GIL and never looks at signals: only the kill path ends it."""
    return sum(range(n))


def stubborn(seconds):
    """Catches the interrupt and carries on: the kill path, after cancel_grace."""
    try:
        time.sleep(seconds)
    except BaseException:
        time.sleep(seconds)
    return "never"


async def anap(seconds, tag):
    """An async handler: cancelled through asyncio at its await."""
    try:
        await asyncio.sleep(seconds)
        return tag
    except asyncio.CancelledError:
        CLEANED.append(("cancelled", tag))
        raise


async def aecho(value):
    await asyncio.sleep(0)
    return [value, id(asyncio.get_running_loop())]


def big_after(seconds, size):
    """A large result (worker slices) that comes just after the caller gave up."""
    time.sleep(seconds)
    return bytes(size)


def slow_elements(n, seconds):
    """A result stream whose elements take `seconds` each."""
    try:
        for i in range(n):
            time.sleep(seconds)
            yield i
    finally:
        CLEANED.append(("stream", n))


def drain(stream):
    """Reads an argument stream to its end."""
    total = 0
    try:
        for chunk in stream:
            total += len(chunk)
        return total
    finally:
        CLEANED.append(("drain", total))
