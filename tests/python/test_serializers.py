"""Custom-type serializers (protocol/formats/custom.md): the `beambridge.serializers`
registry, the ``{:"$bb_custom", name, version, data}`` term and ``custom`` slices both
ways, the reading errors (``unknown_type``, ``unsupported_version``, ``serializer_failed``,
``bad_metadata``), the writer's fallback to a value's standard form, and all of it
through the real worker."""

from __future__ import annotations

import doctest
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import beambridge
import pytest
import xxhash
from beambridge import Atom, EtfError, FormatError, format_stats, reset_format_stats, serializers
from beambridge.decoder import Decoder
from beambridge.encoder import ResultEncoder
from beambridge.etf import decode, encode, encode_parts
from beambridge.header import Format
from beambridge.serializers import (
    SerializerError,
    SerializerFailedError,
    UnknownTypeError,
    UnsupportedVersionError,
)
from beambridge.terms import TAG_CUSTOM, TAG_SLICE
from hypothesis import given, settings
from hypothesis import strategies as st
from worker_harness import BAD_CALL, BeamArg, Loopback, WorkerProcess, running

FORMATS = Atom("bbtest_formats")
KIND_CUSTOM = Atom("custom")


@dataclass
class Vec:
    x: float
    y: float


class VecChild(Vec):
    pass


def encode_vec(v: Vec) -> bytes:
    return struct.pack("<dd", v.x, v.y)


def decode_vec(data: bytes, version: int) -> Vec:
    if version == 1:
        return Vec(struct.unpack("<d", data)[0], 0.0)
    return Vec(*struct.unpack("<dd", data))


@pytest.fixture
def vec() -> Iterator[serializers.Serializer]:
    serializer = serializers.register(
        Vec, "test.Vec", version=2, reads=[1], encode=encode_vec, decode=decode_vec
    )
    reset_format_stats()
    yield serializer
    serializers.unregister(Vec)


def to_bytes(value: Any, encoder: ResultEncoder | None = None) -> Any:
    """The term a result becomes, decoded as the BEAM would see it."""
    return decode(b"".join(encode_parts(value, encoder or ResultEncoder())))


def test_doctests() -> None:
    result = doctest.testmod(serializers, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 5


def test_the_package_exports_the_registry() -> None:
    assert beambridge.serializers is serializers
    assert beambridge.register is serializers.register
    assert {"serializers", "register", "unregister"} <= set(beambridge.__all__)


# ---- the registry ------------------------------------------------------------------------


def test_register_and_look_up(vec: serializers.Serializer) -> None:
    assert (vec.name, vec.version, vec.reads) == ("test.Vec", 2, frozenset({1, 2}))
    assert vec.schema_id == xxhash.xxh3_64_intdigest(b"test.Vec") and vec.name_bytes == b"test.Vec"
    assert serializers.lookup(Vec) is vec
    assert serializers.lookup(VecChild) is vec  # MRO walk
    assert serializers.lookup(int) is None
    assert (
        serializers.lookup_name("test.Vec") is vec and serializers.lookup_name(b"test.Vec") is vec
    )
    assert serializers.lookup_name(b"\xff") is None
    assert serializers.registered()["test.Vec"] is vec
    assert "test.Vec" in repr(vec)


def test_a_subclass_serializer_wins_over_its_base(vec: serializers.Serializer) -> None:
    child = serializers.register(VecChild, "test.VecChild", encode=encode_vec, decode=decode_vec)
    try:
        assert serializers.lookup(VecChild) is child and serializers.lookup(Vec) is vec
    finally:
        serializers.unregister("test.VecChild")
    assert serializers.lookup(VecChild) is vec


def test_registering_again_replaces(vec: serializers.Serializer) -> None:
    again = serializers.register(Vec, "test.Vec2", version=3, encode=encode_vec, decode=decode_vec)
    assert serializers.lookup(Vec) is again and serializers.lookup_name("test.Vec") is None
    assert again.reads == frozenset({3})


def test_a_name_of_another_class_is_refused(vec: serializers.Serializer) -> None:
    class Other:
        pass

    with pytest.raises(ValueError, match="already registered"):
        serializers.register(Other, "test.Vec", encode=encode_vec, decode=decode_vec)
    assert serializers.lookup_name("test.Vec") is vec


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((int, "x"), ValueError),
        ((Atom, "x"), ValueError),
        ((object, "x"), ValueError),
        ((dict, "x"), ValueError),
        ((Vec, ""), ValueError),
        ((Vec, "x" * 256), ValueError),
        ((Vec, "\udc80"), ValueError),
        ((Vec, b"x"), TypeError),
        ((Vec(1, 2), "x"), TypeError),
    ],
)
def test_bad_registrations(args: tuple[Any, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        serializers.register(*args, encode=encode_vec, decode=decode_vec)


@pytest.mark.parametrize("version", [0, -1, 2**32, 1.0, True])
def test_bad_versions(version: Any) -> None:
    with pytest.raises(ValueError):
        serializers.register(Vec, "test.Vec", version=version, encode=encode_vec, decode=decode_vec)
    with pytest.raises(ValueError):
        serializers.register(Vec, "test.Vec", reads=[version], encode=encode_vec, decode=decode_vec)
    assert serializers.lookup(Vec) is None


def test_unregister_unknown() -> None:
    assert serializers.unregister("no.such") is None and serializers.unregister(Vec) is None


# ---- results -------------------------------------------------------------------------------


def test_result_inline(vec: serializers.Serializer) -> None:
    term = to_bytes([Vec(1.5, -2.0), VecChild(3.0, 4.0)])
    assert term == [
        (TAG_CUSTOM, b"test.Vec", 2, struct.pack("<dd", 1.5, -2.0)),
        (TAG_CUSTOM, b"test.Vec", 2, struct.pack("<dd", 3.0, 4.0)),
    ]
    assert format_stats()[("to_elixir", "custom", "registered")] == {"count": 2, "bytes": 32}


def test_result_slice_and_back(vec: serializers.Serializer) -> None:
    loop = Loopback(threshold=16)
    try:
        term = loop.result(Vec(1.0, 2.0))
        assert term[:2] == (TAG_SLICE, KIND_CUSTOM)
        _, object_id, offset, length, generation, _ = loop.entries[term[2]]
        frame = loop.beam.peers.get(object_id).read_frame(offset, length, generation)
        h = frame.header
        assert (h.format, h.schema_id, h.schema_version) == (Format.CUSTOM, vec.schema_id, 2)
        assert decode(frame.metadata) == (b"test.Vec", 2)
        assert bytes(frame.payload) == struct.pack("<dd", 1.0, 2.0)
        frame.release()
        # a decoder reads the same slice back (invariant 7), and the lease ends with it
        assert loop.back(term) == Vec(1.0, 2.0)
        assert loop.beam.tickets == {}
    finally:
        loop.close()


@given(st.binary(max_size=300))
@settings(max_examples=50, deadline=None)
def test_any_payload_round_trips(data: bytes) -> None:
    class Raw:
        def __init__(self, data: bytes) -> None:
            self.data = data

    serializers.register(
        Raw, "test.Raw", encode=lambda r: bytearray(r.data), decode=lambda d, v: Raw(d)
    )
    try:
        term = to_bytes(Raw(data))
        assert term == (TAG_CUSTOM, b"test.Raw", 1, data)
        assert Decoder().decode(term).data == data
    finally:
        serializers.unregister(Raw)


def test_a_failing_serializer_sends_the_dataclass_fields(
    vec: serializers.Serializer, caplog: pytest.LogCaptureFixture
) -> None:
    serializers.register(Vec, "test.Vec", encode=lambda v: 1 / 0, decode=decode_vec)
    with caplog.at_level(logging.WARNING, logger="beambridge.serializers"):
        assert to_bytes(Vec(1.0, 2.0)) == {b"x": 1.0, b"y": 2.0}
    assert "test.Vec" in caplog.text and "ZeroDivisionError" in caplog.text
    assert "test_serializers.Vec" in caplog.text
    assert format_stats()[("to_elixir", "standard", "encode_failed")]["count"] == 1


@pytest.mark.parametrize("returned", ["text", 12, None, [1, 2]])
def test_a_serializer_returning_no_bytes_falls_back(returned: Any) -> None:
    class Plain:
        def __init__(self) -> None:
            self.a = 1
            self.b = [Atom("x")]

    serializers.register(Plain, "test.Plain", encode=lambda p: returned, decode=decode_vec)
    try:
        assert to_bytes(Plain()) == {b"a": 1, b"b": [Atom("x")]}  # vars(obj)
    finally:
        serializers.unregister(Plain)


def test_a_failing_serializer_of_a_builtin_subclass_sends_the_plain_value() -> None:
    class Tag(int):
        pass

    serializers.register(Tag, "test.Tag", encode=lambda t: 1 / 0, decode=decode_vec)
    try:
        assert to_bytes([Tag(5)]) == [5]
    finally:
        serializers.unregister(Tag)


def test_a_failing_serializer_without_a_standard_form_is_a_type_error() -> None:
    class Slotted:
        __slots__ = ("a",)

    serializers.register(Slotted, "test.Slotted", encode=lambda s: 1 / 0, decode=decode_vec)
    try:
        with pytest.raises(TypeError, match="neither dataclass fields nor a __dict__"):
            to_bytes(Slotted())
    finally:
        serializers.unregister(Slotted)


def test_without_a_serializer_an_object_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot send"):
        to_bytes(Vec(1.0, 2.0))


# ---- arguments ------------------------------------------------------------------------------


def test_argument_inline(vec: serializers.Serializer) -> None:
    args = Decoder()
    got = args.decode([(TAG_CUSTOM, b"test.Vec", 2, struct.pack("<dd", 1.0, 2.0)),
                        (TAG_CUSTOM, b"test.Vec", 1, struct.pack("<d", 7.0))])  # fmt: skip
    assert got == [Vec(1.0, 2.0), Vec(7.0, 0.0)]
    assert format_stats()[("from_elixir", "custom", "inline")] == {"count": 2, "bytes": 24}


def test_unknown_type(vec: serializers.Serializer) -> None:
    with pytest.raises(UnknownTypeError) as info:
        Decoder().decode((TAG_CUSTOM, b"geo.Point", 3, b""))
    err = info.value
    assert isinstance(err, SerializerError) and isinstance(err, beambridge.BridgeError)
    assert err.reason == "unknown_type" and err.value == "geo.Point"
    assert "geo.Point" in str(err) and "version 3" in str(err)
    assert "beambridge.serializers.register" in str(err)


def test_unsupported_version(vec: serializers.Serializer) -> None:
    with pytest.raises(UnsupportedVersionError) as info:
        Decoder().decode((TAG_CUSTOM, b"test.Vec", 3, b""))
    err = info.value
    assert err.reason == "unsupported_version" and err.value == 3 and err.limit == [1, 2]
    assert "version 3" in str(err) and "[1, 2]" in str(err)


def test_serializer_failed(vec: serializers.Serializer) -> None:
    with pytest.raises(SerializerFailedError) as info:
        Decoder().decode((TAG_CUSTOM, b"test.Vec", 2, b"short"))
    assert info.value.reason == "serializer_failed" and "struct.error" in str(info.value)


@pytest.mark.parametrize(
    "term",
    [
        (TAG_CUSTOM, "test.Vec", 2, b""),
        (TAG_CUSTOM, b"", 2, b""),
        (TAG_CUSTOM, b"x" * 256, 2, b""),
        (TAG_CUSTOM, b"\xff", 2, b""),
        (TAG_CUSTOM, b"test.Vec", 0, b""),
        (TAG_CUSTOM, b"test.Vec", 2**32, b""),
        (TAG_CUSTOM, b"test.Vec", True, b""),
        (TAG_CUSTOM, b"test.Vec", 2, [1]),
        (TAG_CUSTOM, b"test.Vec", 2),
    ],
)
def test_malformed_custom_terms_are_bad_term(vec: serializers.Serializer, term: Any) -> None:
    with pytest.raises(EtfError) as info:
        Decoder().decode(term)
    assert info.value.reason == "bad_term"


@pytest.fixture
def loop() -> Iterator[Loopback]:
    lb = Loopback()
    yield lb
    lb.close()
    assert lb.beam.lent == {}  # every slice released, read or refused


def custom_slice(loop: Loopback, data: bytes, name: bytes, version: int, **header: Any) -> BeamArg:
    frame: dict[str, Any] = {
        "metadata": encode((name, version)),
        "format": Format.CUSTOM,
        "schema_id": xxhash.xxh3_64_intdigest(name),
        "schema_version": version,
    }
    frame.update(header)
    return loop.beam.slice("custom", data, **frame)


def test_argument_slice(vec: serializers.Serializer, loop: Loopback) -> None:
    arg = custom_slice(loop, struct.pack("<dd", 5.0, 6.0), b"test.Vec", 2)
    assert loop.argument(arg) == Vec(5.0, 6.0)
    assert loop.beam.lent == {}  # copied out: released at once
    assert format_stats()[("from_elixir", "custom", "slice")] == {"count": 1, "bytes": 16}


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ({"schema_id": 1}, "schema_id"),
        ({"schema_version": 1}, "schema_id"),
        ({"metadata": encode(b"test.Vec")}, "metadata"),
        ({"metadata": b""}, "metadata"),
        ({"metadata": encode((b"test.Vec", 0))}, "metadata"),
        ({"metadata": encode(("test.Vec", 2, 3))}, "metadata"),
    ],
)
def test_slice_metadata_must_agree_with_the_header(
    vec: serializers.Serializer, loop: Loopback, header: dict[str, Any], field: str
) -> None:
    arg = custom_slice(loop, b"x" * 16, b"test.Vec", 2, **header)
    with pytest.raises(FormatError) as info:
        loop.argument(arg)
    assert info.value.reason == "bad_metadata" and info.value.field == field


def test_slice_errors_end_the_lease(vec: serializers.Serializer, loop: Loopback) -> None:
    cases: list[tuple[bytes, int, bytes, type[Exception]]] = [
        (b"geo.Point", 1, b"x" * 16, UnknownTypeError),
        (b"test.Vec", 7, b"x" * 16, UnsupportedVersionError),
        (b"test.Vec", 2, b"short", SerializerFailedError),
    ]
    for name, version, data, error in cases:
        arg = custom_slice(loop, data, name, version)
        with pytest.raises(error):
            loop.argument(arg)
        assert loop.beam.lent == {}


def test_a_custom_handle_to_another_format_is_bad_term(
    vec: serializers.Serializer, loop: Loopback
) -> None:
    arg = loop.beam.slice("custom", b"x" * 16, format=Format.RAW)
    with pytest.raises(EtfError, match="format"):
        loop.argument(arg)


# ---- through the real worker ------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    with running(BEAMBRIDGE_THRESHOLD="1024") as w:
        yield w
        assert w.beam.lent == {}


def call(w: WorkerProcess, function: str, *args: Any, **kw: Any) -> tuple[str, Any]:
    return w.call(function, *args, module=FORMATS, **kw)


def test_worker_results(worker: WorkerProcess) -> None:
    status, term = call(worker, "point", 1.5, 2.5)
    assert (status, term) == ("ok", (TAG_CUSTOM, b"bbtest.Point", 2, struct.pack("<dd", 1.5, 2.5)))
    status, term = call(worker, "blob", 5000)
    assert status == "ok" and term[:2] == (TAG_SLICE, KIND_CUSTOM)
    _, object_id, offset, length, generation, _ = worker.entry(term)
    frame = worker.beam.peers.get(object_id).read_frame(offset, length, generation)
    assert frame.header.format == Format.CUSTOM
    assert frame.header.schema_id == xxhash.xxh3_64_intdigest(b"bbtest.Blob")
    assert decode(frame.metadata) == (b"bbtest.Blob", 1)
    assert frame.payload.nbytes == 5000
    frame.release()


def test_worker_falls_back_and_warns(worker: WorkerProcess) -> None:
    assert call(worker, "broken", 7) == ("ok", {b"n": 7})
    assert call(worker, "value", 1) == ("ok", 1)  # the warning went before this answer
    text = worker.log_text("stderr").decode()
    assert "bbtest.Broken" in text and "RuntimeError" in text and "standard form" in text


def test_worker_arguments(worker: WorkerProcess) -> None:
    v2 = (TAG_CUSTOM, b"bbtest.Point", 2, struct.pack("<dd", 1.0, 2.0))
    v1 = (TAG_CUSTOM, b"bbtest.Point", 1, struct.pack("<d", 3.0))
    assert call(worker, "canon", [v2, v1]) == ("ok", b"[Point(1.0,2.0),Point(3.0,0.0)]")
    data = bytes(range(256)) * 20
    arg = worker.beam.slice(
        "custom",
        data,
        metadata=encode((b"bbtest.Blob", 1)),
        schema_id=xxhash.xxh3_64_intdigest(b"bbtest.Blob"),
        schema_version=1,
    )
    assert call(worker, "canon", arg) == ("ok", b"Blob(5120)")
    assert worker.beam.lent == {}


@pytest.mark.parametrize(
    ("term", "reason", "text"),
    [
        ((TAG_CUSTOM, b"geo.Nope", 1, b""), "unknown_type", b"geo.Nope"),
        ((TAG_CUSTOM, b"bbtest.Point", 9, b""), "unsupported_version", b"version 9"),
        ((TAG_CUSTOM, b"bbtest.Point", 2, b"bad"), "serializer_failed", b"struct.error"),
        ((TAG_CUSTOM, b"bbtest.Broken", 1, b""), "serializer_failed", b"exploded"),
        ((TAG_CUSTOM, b"bbtest.Point", 0, b""), "bad_term", b"version"),
    ],
)
def test_worker_argument_errors(worker: WorkerProcess, term: Any, reason: str, text: bytes) -> None:
    status, (kind, got, message) = call(worker, "canon", term)
    assert (status, kind, got) == ("error", BAD_CALL, reason)
    assert text in message
    assert call(worker, "value", 1) == ("ok", 1)  # the worker carries on


def test_worker_slice_bad_metadata(worker: WorkerProcess) -> None:
    name = b"bbtest.Point"
    arg = worker.beam.slice(
        "custom",
        b"x" * 16,
        metadata=encode((name, 2)),
        schema_id=xxhash.xxh3_64_intdigest(name),
        schema_version=1,
    )
    status, (kind, reason, message) = call(worker, "canon", arg)
    assert (status, kind, reason) == ("error", BAD_CALL, "bad_metadata")
    assert b"schema_version 1" in message
    assert worker.beam.lent == {}


def test_worker_call_options(worker: WorkerProcess) -> None:
    status, term = call(worker, "point", 1.0, 2.0, opts={b"format": b"etf"})
    assert (status, term) == ("ok", (TAG_CUSTOM, b"bbtest.Point", 2, struct.pack("<dd", 1.0, 2.0)))
