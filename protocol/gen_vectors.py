#!/usr/bin/env python3
"""Write the golden vectors of protocol/SPEC.md §14, all three kinds.

* frames: ``protocol/vectors/NAME.bin`` + ``NAME.json``;
* control frames: ``protocol/vectors/control/NAME.bin`` + ``NAME.json``;
* data terms: ``protocol/vectors/terms/NAME.etf`` + ``NAME.json``.

This script is the only way the vectors are made (``make vectors``). Output is
deterministic: no randomness, JSON with sorted keys. Before anything is written, every
vector is checked with the package: a good frame is read back and a bad one fails at
exactly its intended check (so every earlier check in the §6 order passes); a good
control frame splits into the stated envelope and body and is a message of §8.3 for its
receiver, a bad one is refused with the stated error; a good data term decodes (as the
worker decodes arguments) to the stated value, a bad one fails with the stated error.
Files in the three directories that this script no longer makes are removed.

A bad control or term vector's ``error`` is ``{"reason", "field"}`` when one side's code
alone refuses it, or ``{"beam": {"kind", "reason", "field"}, "worker": {"reason",
"field"}}`` when both sides' code refuses it in its own words: ``beam`` is what
elixir/lib answers (``Bridge.Control.split/1`` and ``Bridge.Worker`` for control frames,
``Bridge.Decoder.decode_result/3`` for terms), ``worker`` what python/beambridge answers
(``beambridge.control.split`` with ``from_beam`` or ``from_worker``; ``etf.decode`` and
``beambridge.decoder.Decoder``). Only the ``worker`` half is checked here; the Elixir
suite checks the ``beam`` half. A vector whose two sides disagree with SPEC carries
``"xfail": why``; it is written as SPEC says and both suites skip it.

Usage: python protocol/gen_vectors.py [--root DIR]   all three kinds under DIR
                                                     (default protocol/vectors)
       python protocol/gen_vectors.py FRAMES_DIR     the frame vectors only
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

import lz4.frame  # noqa: E402
import numpy as np  # noqa: E402
import xxhash  # noqa: E402
from beambridge import control  # noqa: E402
from beambridge.decoder import Decoder  # noqa: E402
from beambridge.encoder import ResultEncoder  # noqa: E402
from beambridge.errors import BridgeError, HeaderError  # noqa: E402
from beambridge.etf import Atom, decode, encode, encode_parts  # noqa: E402
from beambridge.header import Codec, Format, decode_frame, encode_frame  # noqa: E402

# Header field offsets and struct codes, straight from SPEC.md §3.1 (kept independent
# of the package's own layout on purpose).
FIELDS: dict[str, tuple[int, str]] = {
    "magic": (0, "4s"),
    "version_major": (4, "<H"),
    "version_minor": (6, "<H"),
    "header_size": (8, "<H"),
    "format": (10, "<B"),
    "codec": (11, "<B"),
    "flags": (12, "<I"),
    "generation": (16, "<Q"),
    "schema_id": (24, "<Q"),
    "schema_version": (32, "<I"),
    "metadata_length": (36, "<I"),
    "payload_offset": (40, "<Q"),
    "payload_length": (48, "<Q"),
    "decoded_length": (56, "<Q"),
    "payload_checksum": (64, "<Q"),
    "reserved": (72, "48s"),
    "header_checksum": (120, "<Q"),
}
JSON_HEADER_FIELDS = [f for f in FIELDS if f not in ("magic", "reserved")]


def get(frame: bytes, field: str) -> Any:
    offset, code = FIELDS[field]
    return struct.unpack_from(code, frame, offset)[0]


def patch(frame: bytes, reseal: bool = True, **values: Any) -> bytes:
    """Set header fields; recompute the header checksum unless ``reseal`` is False."""
    buf = bytearray(frame)
    for field, value in values.items():
        offset, code = FIELDS[field]
        struct.pack_into(code, buf, offset, value)
    if reseal:
        metadata_length = min(get(bytes(buf), "metadata_length"), max(len(buf) - 128, 0))
        digest = xxhash.xxh3_64_intdigest(
            bytes(buf[:120]) + bytes(buf[128 : 128 + metadata_length])
        )
        struct.pack_into("<Q", buf, 120, digest)
    return bytes(buf)


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes."""
    return bytes((i * 131 + seed * 17 + (i >> 8) * 7) & 0xFF for i in range(n))


# Erlang term_to_binary({ok, 42}) with OTP 26+ encoding (SMALL_ATOM_UTF8_EXT)
ETF_OK_42 = bytes([131, 104, 2, 119, 2]) + b"ok" + bytes([97, 42])
# An Arrow IPC stream holding no record batch: just the end-of-stream marker
ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
LZ4_SOURCE = b"beambridge lz4 frame vector " * 40
LZ4_PAYLOAD = lz4.frame.compress(
    LZ4_SOURCE,
    compression_level=0,
    block_size=lz4.frame.BLOCKSIZE_MAX64KB,
    content_checksum=False,
    block_linked=True,
    store_size=True,
)
TENSOR_META = b'{"dtype":"<f4","shape":[4,8],"order":"C"}'
CUSTOM_META = b'{"type":"MyApp.Point","version":3}'


def good_vectors() -> list[tuple[str, str, bytes]]:
    v = []
    for n in (0, 1, 63, 64, 65, 300):
        desc = f"raw payload of {n} bytes, no metadata"
        v.append((f"good_raw_{n}", desc, encode_frame(pattern(n), generation=n + 1)))
    v += [
        (
            "good_tensor_meta",
            "tensor format with a JSON descriptor as metadata; payload 128 bytes",
            encode_frame(pattern(128, 1), metadata=TENSOR_META, format=Format.TENSOR,
                         generation=7),
        ),
        (
            "good_meta_64",
            "metadata of exactly 64 bytes: the payload starts at 192",
            encode_frame(pattern(10, 2), metadata=pattern(64, 3), generation=2),
        ),
        (
            "good_arrow_stream",
            "arrow_stream format: an Arrow IPC stream with only the end-of-stream marker",
            encode_frame(ARROW_EOS, format=Format.ARROW_STREAM, generation=3),
        ),
        (
            "good_etf",
            "etf format: term_to_binary({ok, 42})",
            encode_frame(ETF_OK_42, format=Format.ETF, generation=4),
        ),
        (
            "good_custom_schema",
            "custom format with schema_id and schema_version and a type descriptor",
            encode_frame(pattern(40, 4), metadata=CUSTOM_META, format=Format.CUSTOM,
                         schema_id=0x0123456789ABCDEF, schema_version=3, generation=5),
        ),
        (
            "good_lz4_frame",
            "lz4_frame codec: a real LZ4 frame; decoded_length > payload_length",
            encode_frame(LZ4_PAYLOAD, codec=Codec.LZ4_FRAME, decoded_length=len(LZ4_SOURCE),
                         generation=6),
        ),
        (
            "good_no_checksum",
            "flag PAYLOAD_CHECKSUM clear: payload_checksum is 0 and not verified",
            encode_frame(pattern(50, 5), checksum=False),
        ),
        (
            "good_extra_padding",
            "payload_offset 320 although 192 would do (writer left room)",
            encode_frame(pattern(20, 6), metadata=b"meta", payload_offset=320),
        ),
        (
            "good_minor1_optional_flag",
            "version_minor 1 with unknown optional flag bit 16 and non-zero reserved bytes: "
            "a 1.0 reader accepts it",
            patch(
                encode_frame(pattern(33, 7), version_minor=1, flags_extra=1 << 16),
                reserved=bytes(range(1, 49)),
            ),
        ),
        (
            "good_trailing_bytes",
            "frame area bigger than the frame: 100 bytes after the payload end",
            encode_frame(pattern(16, 8)) + b"\xee" * 100,
        ),
        (
            "good_max_generation",
            "generation 2^64-1",
            encode_frame(pattern(8, 9), generation=2**64 - 1),
        ),
    ]  # fmt: skip
    return v


BASE = encode_frame(pattern(64, 10), metadata=b"base-meta", generation=9)  # offset 192


def bad_vectors() -> list[tuple[str, str, bytes, str, str]]:
    lz4 = encode_frame(LZ4_PAYLOAD, codec=Codec.LZ4_FRAME, decoded_length=len(LZ4_SOURCE))
    flipped_meta = bytearray(BASE)
    flipped_meta[128] ^= 0x01
    flipped_payload = bytearray(BASE)
    flipped_payload[192 + 5] ^= 0x80
    return [
        ("bad_truncated_header", "127 bytes: one short of a header",
         BASE[:127], "truncated_header", "header"),
        ("bad_truncated_empty", "an empty frame area",
         b"", "truncated_header", "header"),
        ("bad_magic", "magic BBFX",
         patch(BASE, magic=b"BBFX"), "bad_magic", "magic"),
        ("bad_version_major_3", "version_major 3 (a newer major)",
         patch(BASE, version_major=3), "unsupported_version", "version_major"),
        ("bad_version_major_1", "version_major 1 (transport 1, retired)",
         patch(BASE, version_major=1), "unsupported_version", "version_major"),
        ("bad_version_major_0", "version_major 0",
         patch(BASE, version_major=0), "unsupported_version", "version_major"),
        ("bad_header_size", "header_size 64",
         patch(BASE, header_size=64), "bad_header_size", "header_size"),
        ("bad_unknown_format", "format 5",
         patch(BASE, format=5), "unknown_format", "format"),
        ("bad_unknown_codec", "codec 3",
         patch(BASE, codec=3), "unknown_codec", "codec"),
        ("bad_unknown_flags", "required flag bit 1 set",
         patch(BASE, flags=0b11), "unknown_flags", "flags"),
        ("bad_metadata_too_large", "metadata_length 1048577",
         patch(BASE, metadata_length=(1 << 20) + 1), "metadata_too_large", "metadata_length"),
        ("bad_metadata_out_of_bounds", "metadata_length runs past the frame end",
         patch(BASE, metadata_length=len(BASE) - 127), "metadata_out_of_bounds",
         "metadata_length"),
        ("bad_misaligned_payload", "payload_offset 160",
         patch(BASE, payload_offset=160), "misaligned_payload", "payload_offset"),
        ("bad_payload_overlaps_metadata", "payload_offset 128 with 9 bytes of metadata",
         patch(BASE, payload_offset=128), "payload_overlaps_metadata", "payload_offset"),
        ("bad_length_overflow", "payload_offset + payload_length = 2^64 exactly",
         patch(BASE, payload_length=2**64 - 192), "length_overflow", "payload_length"),
        ("bad_length_overflow_max", "payload_length 2^64-1",
         patch(BASE, payload_length=2**64 - 1, decoded_length=2**64 - 1),
         "length_overflow", "payload_length"),
        ("bad_payload_out_of_bounds", "payload_length one past the frame end",
         patch(BASE, payload_length=65, decoded_length=65), "payload_out_of_bounds",
         "payload_length"),
        ("bad_decoded_length", "codec none and decoded_length != payload_length",
         patch(BASE, decoded_length=65), "bad_decoded_length", "decoded_length"),
        ("bad_decoded_too_large", "lz4_frame declaring 2^32+1 decoded bytes",
         patch(lz4, decoded_length=2**32 + 1), "decoded_too_large", "decoded_length"),
        ("bad_header_checksum_mismatch", "header_checksum off by one",
         patch(BASE, reseal=False, header_checksum=get(BASE, "header_checksum") ^ 1),
         "header_checksum_mismatch", "header_checksum"),
        ("bad_header_checksum_metadata", "a metadata byte changed after sealing",
         bytes(flipped_meta), "header_checksum_mismatch", "header_checksum"),
        ("bad_checksum_mismatch", "a payload byte changed; header intact",
         bytes(flipped_payload), "checksum_mismatch", "payload_checksum"),
    ]  # fmt: skip


def describe_good(name: str, description: str, frame: bytes) -> dict[str, Any]:
    header, metadata, payload = decode_frame(frame)  # raises if the vector is not good
    raw = bytes(payload)
    out: dict[str, Any] = {
        "name": name,
        "description": description,
        "valid": True,
        "frame_size": len(frame),
        "header": {field: get(frame, field) for field in JSON_HEADER_FIELDS},
        "metadata_hex": metadata.hex(),
        "payload_xxh3": xxhash.xxh3_64_intdigest(raw),
    }
    if len(raw) <= 256:
        out["payload_hex"] = raw.hex()
    assert out["header"]["payload_length"] == header.payload_length
    return out


def describe_bad(
    name: str, description: str, frame: bytes, reason: str, field: str
) -> dict[str, Any]:
    try:
        decode_frame(frame)
    except HeaderError as exc:
        if (exc.reason, exc.field) != (reason, field):
            raise AssertionError(
                f"{name}: fails with {exc.reason}/{exc.field}, meant {reason}/{field}"
            ) from exc
    else:
        raise AssertionError(f"{name}: decodes, meant to fail with {reason}")
    return {
        "name": name,
        "description": description,
        "valid": False,
        "frame_size": len(frame),
        "error": {"reason": reason, "field": field},
    }  # fmt: skip


# ---- term JSON (SPEC §14) -------------------------------------------------------------------


@dataclass(frozen=True)
class MapOf:
    """A map given by its pairs, for keys a Python ``dict`` cannot hold apart (a list;
    ``1`` and ``1.0``)."""

    pairs: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class TensorOf:
    """The tensor a receiver makes: dtype, shape, order and the bytes in that order."""

    dtype: str
    shape: tuple[int, ...]
    order: str
    data: bytes


def term_json(value: Any) -> Any:
    """SPEC §14's term JSON of a value as the Python side holds it. A map's pairs are
    sorted by the compact JSON text of the key's rendering."""
    if value is True or value is False or value is None:
        return {"atom": {True: "true", False: "false", None: "nil"}[value]}
    kind = type(value)
    if kind is int:
        return {"int": value}
    if kind is float:
        return {"float": value}
    if kind is Atom:
        return {"atom": str(value)}
    if kind in (bytes, bytearray, memoryview):
        return {"bin": bytes(value).hex()}
    if kind is list:
        return {"list": [term_json(v) for v in value]}
    if kind is tuple:
        return {"tuple": [term_json(v) for v in value]}
    if kind is dict:
        return _map_json(value.items())
    if kind is MapOf:
        return _map_json(value.pairs)
    if kind is TensorOf:
        return _tensor_json(value.dtype, value.shape, value.order, value.data)
    if isinstance(value, np.ndarray):
        order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
        return _tensor_json(value.dtype.str, value.shape, order, value.tobytes(order=order))
    raise TypeError(f"no term JSON for {type(value)}")


def _map_json(pairs: Any) -> dict[str, Any]:
    rendered = [[term_json(k), term_json(v)] for k, v in pairs]
    rendered.sort(key=lambda pair: json.dumps(pair[0], sort_keys=True, separators=(",", ":")))
    return {"map": rendered}


def _tensor_json(dtype: str, shape: Any, order: str, data: bytes) -> dict[str, Any]:
    dims = [int(d) for d in shape]
    return {"tensor": {"dtype": dtype, "shape": dims, "order": order, "bin": data.hex()}}


# ---- ETF by hand (forms the package's encoder never writes) ---------------------------------

NO_BODY: Any = object()


def inner(term: Any) -> bytes:
    """A term's ETF without the version byte."""
    return encode(term)[1:]


def etf(*parts: bytes) -> bytes:
    return b"\x83" + b"".join(parts)


def raw_list(items: list[bytes], tail: bytes = b"j") -> bytes:
    """LIST_EXT of already-encoded items; a ``tail`` other than NIL makes it improper."""
    return b"l" + struct.pack(">I", len(items)) + b"".join(items) + tail


def raw_tuple(*items: bytes) -> bytes:
    return bytes((104, len(items))) + b"".join(items)


#: NEW_PID_EXT of <0.42.0> on nonode@nohost (an atom every VM has).
PID = b"X" + inner(Atom("nonode@nohost")) + struct.pack(">III", 42, 0, 0)
#: EXPORT_EXT of ``fun erlang:node/0`` (a fun the BEAM's [:safe] decoding accepts).
FUN = b"q" + inner(Atom("erlang")) + inner(Atom("node")) + bytes((97, 0))


def body_etf(body: Any) -> bytes:
    return b"" if body is NO_BODY else encode(body)


def raw_frame(envelope: bytes, body: bytes = b"", size: int | None = None) -> bytes:
    """``envelope_size | envelope | body`` (§8.1), ``size`` the stated envelope_size."""
    return (len(envelope) if size is None else size).to_bytes(4, "big") + envelope + body


# ---- control frames (SPEC §8) ---------------------------------------------------------------

A = Atom
SLICE = A("$bb_slice")
#: What python/beambridge says of every control frame it refuses.
REFUSED = {"reason": "bad_term", "field": "envelope"}


def beam_refuses(reason: str, field: str = "control_frame") -> dict[str, str]:
    """The error elixir/lib answers a worker's bad frame with (kind ``bad_frame``)."""
    return {"kind": "bad_frame", "reason": reason, "field": field}


@dataclass(frozen=True)
class ControlVector:
    name: str
    description: str
    sender: str  # "beam" or "worker": who sends the frame
    frame: bytes
    envelope: Any = None  # good: the envelope term
    body: Any = NO_BODY  # good: the body term, or NO_BODY
    beam: dict[str, str] | None = None  # bad: elixir/lib's error
    worker: dict[str, str] | None = None  # bad: python/beambridge's error
    xfail: str | None = None

    @property
    def valid(self) -> bool:
        return self.beam is None and self.worker is None


def good_control(
    name: str, description: str, sender: str, envelope: Any, body: Any = NO_BODY
) -> ControlVector:
    """A frame as its sender writes it: the BEAM with ``term_to_binary`` (OTP 26's
    encoding: UTF-8 atoms, STRING_EXT for lists of bytes, map keys in term order), the
    worker with `beambridge.control.join`, which writes the same bytes."""
    parts = control.join(envelope, None if body is NO_BODY else [encode(body)])
    frame = b"".join(bytes(p) for p in parts)
    assert frame == raw_frame(encode(envelope), body_etf(body)), name
    return ControlVector(name, description, sender, frame, envelope, body)


def bad_control(
    name: str,
    description: str,
    sender: str,
    frame: bytes,
    *,
    beam: dict[str, str] | None = None,
    worker: dict[str, str] | None = REFUSED,
    xfail: str | None = None,
) -> ControlVector:
    return ControlVector(name, description, sender, frame, beam=beam, worker=worker, xfail=xfail)


NONCE_1, NONCE_2 = 0x0123456789ABCDEF, 0xFEDCBA9876543210


def control_vectors() -> list[ControlVector]:
    call = A("call")
    v = [
        # ---- BEAM -> worker, good
        good_control("good_beam_object_arena", "the BEAM announces an arena of its own",
                     "beam", (A("object"), A("arena"), 4242, 17, 1, 8 << 20, NONCE_1)),
        good_control("good_beam_object_lease_table",
                     "the BEAM announces the worker's lease table (65536 tickets)", "beam",
                     (A("object"), A("lease_table"), 4242, 18, 2, 528384, NONCE_2)),
        good_control("good_beam_object_dropped", "the BEAM dropped its arena 3", "beam",
                     (A("object_dropped"), 3)),
        good_control("good_beam_call", "a call with atom names, no options, no slices",
                     "beam", (call, 1, A("statistics"), A("mean"), {}, []), [[1, 2, 3]]),
        good_control("good_beam_call_binary_names",
                     "a call naming its module and function with binaries", "beam",
                     (call, 2, b"mymod.sub", b"handler", {}, []),
                     [b"abc", 1.5, None, (A("ok"), -1)]),
        good_control("good_beam_call_options", "a call with the format option, no slices",
                     "beam", (call, 3, A("statistics"), A("mean"), {b"format": b"packed"}, []),
                     [[0.5, 1.5, 2.5]]),
        good_control("good_beam_call_slices",
                     "a call lending two slices, named by handles in the body", "beam",
                     (call, 4, A("statistics"), A("mean"), {},
                      [(1, 128, 4096, 7), (2, 64, 256, 8)]),
                     [(SLICE, A("binary"), 0), (SLICE, A("packed"), 1)]),
        good_control("good_beam_call_options_slices",
                     "a call with the largest id, options (one unknown, ignored) and a slice",
                     "beam",
                     (call, 2**64 - 1, b"m", b"f", {b"format": b"arrow", b"x_unknown": 1},
                      [(70000, 2**40 - 128, 128, 2**63)]),
                     [(SLICE, A("records"), 0), {b"k": [1, 2]}]),
        good_control("good_beam_sealed_mapped", "sealed objects 5 and 6 are mapped "
                     "(a list of bytes: STRING_EXT)", "beam", (A("sealed_mapped"), [5, 6])),
        good_control("good_beam_sealed_mapped_large_ids", "sealed objects 256 and 70000 "
                     "are mapped (LIST_EXT)", "beam", (A("sealed_mapped"), [256, 70000])),
        good_control("good_beam_sealed_mapped_empty", "an empty sealed_mapped list", "beam",
                     (A("sealed_mapped"), [])),
        good_control("good_beam_shutdown", "shutdown", "beam", A("shutdown")),
        # ---- worker -> BEAM, good
        good_control("good_worker_ready", "the worker's first frame, version 2.0", "worker",
                     (A("ready"), 4321, (2, 0))),
        good_control("good_worker_ready_minor", "a worker of a newer minor version, 2.7",
                     "worker", (A("ready"), 4321, (2, 7))),
        good_control("good_worker_object_arena", "the worker announces an arena", "worker",
                     (A("object"), A("arena"), 4321, 5, 1, 16 << 20, NONCE_1)),
        good_control("good_worker_object_sealed", "the worker announces a sealed object",
                     "worker", (A("object"), A("sealed"), 4321, 6, 2, 8192, NONCE_2)),
        good_control("good_worker_object_dropped", "the worker dropped its arena 1", "worker",
                     (A("object_dropped"), 1)),
        good_control("good_worker_ok", "an answer without slices, releasing nothing",
                     "worker", (A("ok"), 7, [], []), (A("ok"), [1, 2.5], b"three")),
        good_control("good_worker_ok_worker_slice",
                     "an answer naming a slice of a worker arena, lent under ticket 0; one "
                     "BEAM slice released", "worker",
                     (A("ok"), 8, [control.worker_slice(1, 64, 4096, 12, 0)], [(3, 128, 5)]),
                     (SLICE, A("tensor"), 0)),
        good_control("good_worker_ok_sealed_slice", "an answer naming the frame of a "
                     "sealed object", "worker",
                     (A("ok"), 9, [control.sealed_slice(2, 64, 8128, 13)], []),
                     (SLICE, A("arrow"), 0)),
        good_control("good_worker_ok_beam_slice", "an answer echoing bytes 128..1128 of a "
                     "BEAM slice the worker holds", "worker",
                     (A("ok"), 10, [control.beam_slice(3, 128, 5, 128, 1000)], []),
                     (SLICE, A("binary"), 0)),
        good_control("good_worker_ok_all_slices", "an answer naming one slice of each "
                     "kind of entry, releasing another BEAM slice", "worker",
                     (A("ok"), 11,
                      [control.worker_slice(1, 4160, 256, 14, 1),
                       control.sealed_slice(4, 64, 128, 15),
                       control.beam_slice(3, 128, 5, 256, 0)],
                      [(3, 4224, 6)]),
                     [(SLICE, A("packed"), 0), (SLICE, A("custom"), 1), (SLICE, A("binary"), 2)]),
        good_control("good_worker_error_python_exception", "the handler raised", "worker",
                     (A("error"), 12,
                      control.python_exception(b"ValueError", b"x must be positive",
                                               b"Traceback (most recent call last):\n"),
                      [])),
        good_control("good_worker_error_bad_call", "the call was wrong (no such function); "
                     "one BEAM slice released", "worker",
                     (A("error"), 13,
                      control.bad_call("no_function", b"module m has no function f"),
                      [(3, 128, 5)])),
        good_control("good_worker_released", "two BEAM slices released between calls",
                     "worker", (A("released"), [(3, 128, 5), (3, 4224, 6)])),
        good_control("good_worker_released_empty", "an empty released list", "worker",
                     (A("released"), [])),
        good_control("good_worker_log_stdout", "a handler printed a line", "worker",
                     (A("log"), A("stdout"), b"hello\n")),
        good_control("good_worker_log_stderr", "a library warned on stderr", "worker",
                     (A("log"), A("stderr"), b"warning: \xff not UTF-8\n")),
    ]  # fmt: skip
    # ---- BEAM -> worker, bad (the worker is the receiver; the BEAM's splitter is run on
    # them too and, where it refuses, its error is given as well)
    dropped = encode((A("object_dropped"), 3))
    v += [
        bad_control("bad_beam_envelope_past_frame", "envelope_size one byte past the frame",
                    "beam", raw_frame(dropped, size=len(dropped) + 1),
                    beam=beam_refuses("bad_term")),
        bad_control("bad_beam_no_envelope_size", "a frame of 3 bytes", "beam", b"\x00\x00\x01",
                    beam=beam_refuses("bad_term")),
        bad_control("bad_beam_envelope_pid", "{:object_dropped, pid}: a PID is not safe ETF",
                    "beam", raw_frame(etf(raw_tuple(inner(A("object_dropped")), PID)))),
        bad_control("bad_beam_envelope_improper_list", "{:sealed_mapped, [1 | 2]}",
                    "beam", raw_frame(etf(raw_tuple(inner(A("sealed_mapped")),
                                                    raw_list([inner(1)], inner(2)))))),
        bad_control("bad_beam_envelope_fun", "{:object_dropped, fun erlang:node/0}",
                    "beam", raw_frame(etf(raw_tuple(inner(A("object_dropped")), FUN)))),
        bad_control("bad_beam_unknown_tag", "{:exit, 3}: object_dropped's shape, unknown tag",
                    "beam", raw_frame(encode((A("exit"), 3)))),
        bad_control("bad_beam_object_dropped_arity", "{:object_dropped, 3, 4}", "beam",
                    raw_frame(encode((A("object_dropped"), 3, 4)))),
        bad_control("bad_beam_call_arity", "a call of 5 elements (no slices), with a body",
                    "beam", raw_frame(encode((call, 1, A("m"), A("f"), {})), encode([]))),
        bad_control("bad_beam_call_id_0", "a call whose id is 0", "beam",
                    raw_frame(encode((call, 0, A("m"), A("f"), {}, [])), encode([]))),
        bad_control("bad_beam_object_sealed", "the BEAM announces an object of kind "
                    "sealed (only workers own those)", "beam",
                    raw_frame(encode((A("object"), A("sealed"), 4242, 17, 1, 8192, NONCE_1)))),
        bad_control("bad_beam_object_dropped_body", "object_dropped with a body", "beam",
                    raw_frame(dropped, encode([]))),
        bad_control("bad_beam_shutdown_body", "shutdown with a body", "beam",
                    raw_frame(encode(A("shutdown")), encode([]))),
    ]  # fmt: skip
    # ---- worker -> BEAM, bad (the BEAM is the receiver; the Python package's reader of
    # worker frames, which the worker harness uses, is run on them too)
    unexpected = beam_refuses("unexpected_message")
    ok_empty = encode((A("ok"), 7, [], []))
    released = encode((A("released"), [(3, 128, 5)]))
    v += [
        bad_control("bad_worker_envelope_past_frame", "envelope_size one byte past the frame",
                    "worker", raw_frame(ok_empty, encode(1), size=len(ok_empty) + 4),
                    beam=beam_refuses("bad_term")),
        bad_control("bad_worker_no_envelope_size", "a frame of 3 bytes", "worker",
                    b"\x00\x00\x01", beam=beam_refuses("bad_term")),
        bad_control("bad_worker_envelope_pid", "{:object_dropped, pid}: a PID is not safe "
                    "ETF (binary_to_term/2 [:safe] takes it; the message check refuses it)",
                    "worker", raw_frame(etf(raw_tuple(inner(A("object_dropped")), PID))),
                    beam=unexpected),
        bad_control("bad_worker_envelope_improper_list", "{:ready, 4321, [2 | 0]}",
                    "worker", raw_frame(etf(raw_tuple(inner(A("ready")), inner(4321),
                                                      raw_list([inner(2)], inner(0))))),
                    beam=unexpected),
        bad_control("bad_worker_envelope_fun", "{:log, :stdout, fun erlang:node/0}", "worker",
                    raw_frame(etf(raw_tuple(inner(A("log")), inner(A("stdout")), FUN))),
                    beam=unexpected),
        bad_control("bad_worker_unknown_tag", "{:exit, 7, [], []} + body: ok's shape, a tag "
                    "that is no message", "worker",
                    raw_frame(encode((A("exit"), 7, [], [])), encode(1)), beam=unexpected),
        bad_control("bad_worker_new_atom_tag", "a tag that is an atom no VM has "
                    "(bb_golden_vector_tag_nobody_made): [:safe] refuses to create it",
                    "worker", raw_frame(encode((A("bb_golden_vector_tag_nobody_made"), 1))),
                    beam=beam_refuses("bad_term")),
        bad_control("bad_worker_object_dropped_arity", "{:object_dropped, 1, 2}", "worker",
                    raw_frame(encode((A("object_dropped"), 1, 2))), beam=unexpected),
        bad_control("bad_worker_error_detail", "{:error, 7, \"oops\", []}: the error is no "
                    "python_exception or bad_call tuple", "worker",
                    raw_frame(encode((A("error"), 7, b"oops", []))), beam=unexpected),
        bad_control("bad_worker_ok_entry_arity", "an answer whose slice entry "
                    "{:worker, 1, 64, 4096} has too few elements", "worker",
                    raw_frame(encode((A("ok"), 7, [(A("worker"), 1, 64, 4096)], [])),
                              encode((SLICE, A("tensor"), 0))),
                    beam=beam_refuses("bad_slice", "slices")),
        bad_control("bad_worker_ok_no_body", "an ok answer without its body", "worker",
                    raw_frame(ok_empty), beam=beam_refuses("bad_term")),
        bad_control("bad_worker_released_body", "released with a body", "worker",
                    raw_frame(released, encode([])), beam=unexpected),
        bad_control("bad_worker_released_improper_list", "{:released, [{3, 128, 5} | 0]}",
                    "worker", raw_frame(etf(raw_tuple(inner(A("released")),
                                                      raw_list([inner((3, 128, 5))],
                                                               inner(0))))),
                    beam=beam_refuses("bad_slice", "slices")),
        bad_control("bad_worker_envelope_trailing_bytes", "an envelope of {:object_dropped, "
                    "1} and one byte more inside envelope_size", "worker",
                    raw_frame(encode((A("object_dropped"), 1)) + b"\x00"),
                    beam=beam_refuses("bad_term")),
    ]  # fmt: skip
    return v


def check_control(v: ControlVector) -> dict[str, Any]:
    """The vector checked with the package (its receiver's reader for ``from: beam``,
    the reader of worker frames for ``from: worker``); its JSON."""
    read = control.from_beam if v.sender == "beam" else control.from_worker
    doc: dict[str, Any] = {"name": v.name, "description": v.description, "from": v.sender}
    doc.update(valid=v.valid, frame_size=len(v.frame))
    if v.xfail:
        doc["xfail"] = v.xfail
    try:
        envelope, body = control.split(v.frame)
        read(envelope, body is not None)
    except control.ProtocolError as exc:
        if v.valid or {"reason": exc.reason, "field": exc.field} != v.worker:
            raise AssertionError(f"{v.name}: refused with {exc.reason}/{exc.field}") from exc
        doc["error"] = error_json(v.beam, v.worker)
        return doc
    if not v.valid:
        raise AssertionError(f"{v.name}: accepted, meant to be refused with {v.worker}")
    assert term_json(envelope) == term_json(v.envelope), v.name
    if v.sender == "beam":
        _check_erlang_order(v.envelope, v.name)
    doc["envelope"] = term_json(envelope)
    if v.body is NO_BODY:
        assert body is None, v.name
        doc["body"] = None
    else:
        assert body is not None and term_json(decode(body)) == term_json(v.body), v.name
        doc["body"] = term_json(decode(body))
    return doc


def _check_erlang_order(term: Any, name: str) -> None:
    """A map the BEAM sends has its keys in term order (term_to_binary writes them so);
    the maps of these vectors have binary keys only."""
    if type(term) in (list, tuple):
        for item in term:
            _check_erlang_order(item, name)
    elif type(term) is dict:
        keys = list(term)
        assert all(type(k) is bytes for k in keys) and keys == sorted(keys), name


def error_json(beam: dict[str, str] | None, worker: dict[str, str] | None) -> dict[str, Any]:
    if beam is None or worker is None:
        return dict(beam or worker or {})
    return {"beam": dict(beam), "worker": dict(worker)}


# ---- data terms (SPEC §9, §10) --------------------------------------------------------------


@dataclass(frozen=True)
class TermVector:
    name: str
    description: str
    etf: bytes
    value: Any = NO_BODY  # good: the value a receiver makes
    beam: dict[str, str] | None = None  # bad: elixir/lib's error
    worker: dict[str, str] | None = None  # bad: python/beambridge's error
    xfail: tuple[str, str] | None = None  # (the side that disagrees with SPEC, why)
    # good for the BEAM, but a value Python cannot hold (SPEC §10): the worker's error
    worker_refuses: dict[str, str] | None = None

    @property
    def valid(self) -> bool:
        return self.beam is None and self.worker is None


def good_term(
    name: str,
    description: str,
    data: bytes,
    value: Any,
    xfail: tuple[str, str] | None = None,
    worker_refuses: dict[str, str] | None = None,
) -> TermVector:
    return TermVector(name, description, data, value, xfail=xfail, worker_refuses=worker_refuses)


def bad_term(
    name: str,
    description: str,
    data: bytes,
    beam: dict[str, str],
    worker: dict[str, str],
    xfail: tuple[str, str] | None = None,
) -> TermVector:
    return TermVector(name, description, data, beam=beam, worker=worker, xfail=xfail)


def beam_result(reason: str, field: str = "result", kind: str = "bad_frame") -> dict[str, str]:
    """The error ``Bridge.Decoder.decode_result/3`` gives a result term."""
    return {"kind": kind, "reason": reason, "field": field}


def worker_term(field: str | None) -> dict[str, str]:
    """The error `beambridge.decoder.Decoder` (or `beambridge.etf.decode`) gives."""
    return {"reason": "bad_term"} if field is None else {"reason": "bad_term", "field": field}


def records(value: Any) -> bytes:
    """``value`` as the worker writes a record list or column map under format arrow:
    ``{:"$bb_records", layout, stream}``."""
    encoder = ResultEncoder(None, threshold=2**40, policy="arrow")
    data = b"".join(bytes(p) for p in encode_parts(value, encoder))
    assert decode(data)[0] == "$bb_records"
    return data


def tensor(dtype: str, shape: list[int], order: str | None, data: bytes) -> bytes:
    desc: dict[bytes, Any] = {b"dtype": dtype.encode(), b"shape": shape}
    if order is not None:
        desc[b"order"] = order.encode()
    return encode((A("$bb_tensor"), desc, data))


def packed(dtype: str, values: list[Any]) -> bytes:
    return encode((A("$bb_packed"), dtype.encode(), np.array(values, dtype=dtype).tobytes()))


INTS = [0, 255, 256, -1, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**64 - 1, -(2**64), 2**100]
FLOATS = [
    0.0,
    -0.0,
    1.5,
    -2.25,
    0.1,
    1e300,
    5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
]
PACKED = [
    ("|i1", [-128, 0, 127]),
    ("|u1", [0, 128, 255]),
    ("<i2", [-32768, 1, 32767]),
    ("<u2", [0, 65535]),
    ("<i4", [-(2**31), 2**31 - 1]),
    ("<u4", [0, 2**32 - 1]),
    ("<i8", [-(2**63), 2**63 - 1]),
    ("<u8", [0, 2**64 - 1]),
    ("<f8", [1.5, -0.0, 1e300, 5e-324]),
]
ROWS = [
    {b"id": 1, b"score": 1.5, b"ok": True, b"tag": b"a", b"none": None},
    {b"id": None, b"score": -2.0, b"ok": False, b"tag": None, b"none": None},
    {b"id": -(2**63), b"score": None, b"ok": None, b"tag": b"", b"none": None},
]
COLUMNS = {
    b"n": [1, 2, None],
    b"x": [0.5, None, 2.5],
    b"flag": [True, False, True],
    b"blob": [b"\x00\xff", b"", None],
    b"void": [None, None, None],
}
ATOM_ROWS = [{A("id"): 1, A("name"): b"x"}, {A("id"): 2, A("name"): b"y"}]


def term_vectors() -> list[TermVector]:
    v = [
        good_term("good_integers", "integers of every encoding: SMALL_INTEGER, INTEGER, "
                  "SMALL_BIG (int64/uint64 limits and beyond)", encode(INTS), INTS),
        good_term("good_bignum_large", "2^2100: LARGE_BIG (263 bytes of digits)",
                  encode(2**2100), 2**2100),
        good_term("good_floats", "NEW_FLOAT: zero, -0.0, subnormal, the largest double",
                  encode(FLOATS), FLOATS),
        good_term("good_atoms", "atoms, nil, true and false (SMALL_ATOM_UTF8)",
                  encode([A("ok"), None, True, False, A("ünïcode atom")]),
                  [A("ok"), None, True, False, A("ünïcode atom")]),
        good_term("good_atom_encodings", "one atom name in ATOM (latin-1), SMALL_ATOM, "
                  "ATOM_UTF8 and SMALL_ATOM_UTF8",
                  etf(raw_list([b"d\x00\x04caf\xe9", b"s\x02ok", b"v\x00\x02ok",
                                b"w\x05caf\xc3\xa9"])),
                  [A("café"), A("ok"), A("ok"), A("café")]),
        good_term("good_binaries", "binaries: empty, ASCII, any bytes",
                  encode([b"", b"abc", bytes([0, 255, 128])]), [b"", b"abc", bytes([0, 255, 128])]),
        good_term("good_string_ext", "STRING_EXT: a list of small integers",
                  etf(b"k\x00\x04hi\x00\xff"), [104, 105, 0, 255]),
        good_term("good_list_ext_small_ints", "the same kind of list as LIST_EXT",
                  etf(raw_list([inner(1), inner(2), inner(3)])), [1, 2, 3]),
        good_term("good_lists", "empty and nested lists", encode([[], [1, [2.5, []]], [[[]]]]),
                  [[], [1, [2.5, []]], [[[]]]]),
        good_term("good_tuples", "empty, one-element and mixed tuples",
                  encode([(), (1,), (A("ok"), b"x", [1])]), [(), (1,), (A("ok"), b"x", [1])]),
        good_term("good_large_tuple", "a tuple of 300 elements: LARGE_TUPLE",
                  encode(tuple(range(300))), tuple(range(300))),
        good_term("good_map_keys", "a map with a key of each kind: integer, bignum, float, "
                  "atom, nil, true, binary, tuple",
                  encode({7: 1, 2**70: 2, 2.5: 3, A("a"): 4, None: 5, True: 6, b"b": 7,
                          (1, b"x"): 8}),
                  {7: 1, 2**70: 2, 2.5: 3, A("a"): 4, None: 5, True: 6, b"b": 7,
                   (1, b"x"): 8}),
        good_term("good_map_empty", "an empty map", encode({}), {}),
        good_term("good_nested", "maps, lists and tuples inside each other",
                  encode({b"rows": [(A("ok"), 1), (A("error"), b"x")], b"m": {b"k": []}}),
                  {b"rows": [(A("ok"), 1), (A("error"), b"x")], b"m": {b"k": []}}),
        good_term("good_map_list_key", "a map with a list key",
                  etf(b"t\x00\x00\x00\x01" + inner([1, 2]) + inner(1)),
                  MapOf((([1, 2], 1),)),
                  worker_refuses={"reason": "bad_term", "field": "map_key"}),
        good_term("good_map_int_and_float_key", "a map with the keys 1 and 1.0",
                  etf(b"t\x00\x00\x00\x02" + inner(1) + inner(A("int")) + inner(1.0)
                      + inner(A("float"))),
                  MapOf(((1, A("int")), (1.0, A("float")))),
                  worker_refuses={"reason": "bad_term", "field": "map_key"}),
    ]  # fmt: skip
    for dtype, values in PACKED:
        name = "good_packed_" + dtype.translate(str.maketrans("|<", "__")).strip("_")
        description = f'{{:"$bb_packed", "{dtype}", data}}: a list of {len(values)} numbers'
        v.append(good_term(name, description, packed(dtype, values), values))
    v += [
        good_term("good_packed_empty", "packed data of 0 bytes: the empty list",
                  encode((A("$bb_packed"), b"<i4", b"")), []),
        good_term("good_packed_nested", "packed lists inside a list and a map",
                  encode([(A("$bb_packed"), b"|u1", b"\x01\x02"),
                          {b"k": (A("$bb_packed"), b"<f8", np.array([0.25]).tobytes())}]),
                  [[1, 2], {b"k": [0.25]}]),
        good_term("good_records_rows", "a record list with binary keys and int, float, "
                  "bool, binary and null columns (null slots too)", records(ROWS), ROWS),
        good_term("good_records_columns", "a column map with binary keys and int, float, "
                  "bool, binary and null columns", records(COLUMNS), COLUMNS),
        good_term("good_records_rows_atom_keys", "a record list with atom keys",
                  records(ATOM_ROWS), ATOM_ROWS),
        good_term("good_records_columns_no_rows", "a column map of empty columns",
                  records({b"a": [], b"b": []}), {b"a": [], b"b": []}),
        good_term("good_tensor_i4_c", "a 2x3 int32 tensor, C order",
                  tensor("<i4", [2, 3], "C", np.arange(6, dtype="<i4").tobytes()),
                  TensorOf("<i4", (2, 3), "C", np.arange(6, dtype="<i4").tobytes())),
        good_term("good_tensor_f8_f", "a 2x3 float64 tensor, Fortran order",
                  tensor("<f8", [2, 3], "F", np.arange(6, dtype="<f8").tobytes()),
                  TensorOf("<f8", (2, 3), "F", np.arange(6, dtype="<f8").tobytes())),
        good_term("good_tensor_bool", "a 2x2 bool tensor", tensor("|b1", [2, 2], "C",
                  b"\x01\x00\x00\x01"), TensorOf("|b1", (2, 2), "C", b"\x01\x00\x00\x01")),
        good_term("good_tensor_big_endian", "a big-endian uint16 vector",
                  tensor(">u2", [3], "C", b"\x00\x01\x01\x00\xff\xff"),
                  TensorOf(">u2", (3,), "C", b"\x00\x01\x01\x00\xff\xff")),
        good_term("good_tensor_0d", "a 0-d float32 tensor",
                  tensor("<f4", [], "C", np.float32(1.5).tobytes()),
                  TensorOf("<f4", (), "C", np.float32(1.5).tobytes())),
        good_term("good_tensor_empty", "a 0x3 float32 tensor: no bytes",
                  tensor("<f4", [0, 3], "C", b""), TensorOf("<f4", (0, 3), "C", b"")),
        good_term("good_tensor_vector_f", "a vector recorded as F: both orders at once, so "
                  "it is C (tensor.md §3)", tensor("<f8", [2], "F", bytes(16)),
                  TensorOf("<f8", (2,), "C", bytes(16))),
        good_term("good_tensor_no_order", "a descriptor without order: C",
                  tensor("<i8", [2], None, np.array([1, -1], "<i8").tobytes()),
                  TensorOf("<i8", (2,), "C", np.array([1, -1], "<i8").tobytes())),
        good_term("good_tensor_datetime", "a datetime64[ms] vector",
                  tensor("<M8[ms]", [1], "C", np.array([86400000], "<i8").tobytes()),
                  TensorOf("<M8[ms]", (1,), "C", np.array([86400000], "<i8").tobytes())),
        good_term("good_buffer", "{:\"$bb_buffer\", binary}",
                  encode((A("$bb_buffer"), b"buffer bytes")), b"buffer bytes"),
        good_term("good_buffer_empty", "an empty buffer", encode((A("$bb_buffer"), b"")), b""),
    ]  # fmt: skip
    v += [
        bad_term("bad_packed_dtype", "a packed dtype outside the nine: <f4",
                 encode((A("$bb_packed"), b"<f4", bytes(8))),
                 beam_result("bad_term"), worker_term("dtype")),
        bad_term("bad_packed_length", "6 bytes of <i4 data",
                 encode((A("$bb_packed"), b"<i4", bytes(6))),
                 beam_result("bad_term"), worker_term("data")),
        bad_term("bad_packed_nan", "packed <f8 data holding a NaN",
                 encode((A("$bb_packed"), b"<f8", np.array([1.0, np.nan]).tobytes())),
                 beam_result("bad_term"), worker_term("data")),
        bad_term("bad_records_layout", "records with the layout atom :none",
                 encode((A("$bb_records"), A("none"), decode(records(ROWS))[2])),
                 beam_result("bad_term"), worker_term("layout")),
        bad_term("bad_records_not_arrow", "records whose stream is not Arrow",
                 encode((A("$bb_records"), A("rows"), b"not an arrow stream")),
                 beam_result("truncated", kind="bad_call"), worker_term("stream")),
        bad_term("bad_tensor_dtype", "a tensor descriptor with the dtype <q9",
                 tensor("<q9", [1], "C", b"\x00"),
                 beam_result("bad_tensor", "dtype"), worker_term("dtype")),
        bad_term("bad_tensor_data_length", "a 2-element <i4 tensor with 4 bytes of data",
                 tensor("<i4", [2], "C", bytes(4)),
                 beam_result("bad_tensor", "data"), worker_term("data")),
        bad_term("bad_reserved_tag", "{:\"$bb_slice\", 1, 2, 3}: a reserved tag in a tuple "
                 "of no tagged form", encode((SLICE, 1, 2, 3)),
                 beam_result("bad_term"), worker_term("tag")),
        bad_term("bad_reserved_atom", "[:\"$bb_buffer\"]: a reserved atom in user data",
                 encode([A("$bb_buffer")]), beam_result("bad_term"), worker_term("atom")),
        bad_term("bad_improper_list", "[1 | 2]", etf(raw_list([inner(1)], inner(2))),
                 beam_result("bad_term"), worker_term("tail")),
        bad_term("bad_pid", "[pid]: a PID", etf(raw_list([PID])),
                 beam_result("bad_term"), worker_term("tag")),
        bad_term("bad_trailing_bytes", "the term 1 and one byte more", etf(inner(1), b"\x00"),
                 beam_result("bad_term", "control_frame"), worker_term("length")),
    ]  # fmt: skip
    return v


def check_term(v: TermVector) -> dict[str, Any]:
    """The vector decoded as the worker decodes arguments (`beambridge.etf.decode`, then
    `beambridge.decoder.Decoder`); its JSON. A vector the worker side disagrees on is
    checked to still disagree (so a fix makes this script ask for the xfail to go)."""
    doc: dict[str, Any] = {"name": v.name, "description": v.description, "valid": v.valid}
    try:
        got: tuple[str, Any] = ("value", term_json(Decoder().decode(decode(v.etf))))
    except BridgeError as exc:
        got = ("error", {"reason": exc.reason, "field": exc.field})
    if v.valid and v.worker_refuses is not None:
        meets = got[0] == "error" and all(got[1][k] == x for k, x in v.worker_refuses.items())
        doc["value"] = term_json(v.value)
        doc["refused_by"] = {"worker": v.worker_refuses}
    elif v.valid:
        meets = got == ("value", term_json(v.value))
        doc["value"] = term_json(v.value)
    else:
        assert v.worker is not None
        meets = got[0] == "error" and all(got[1][k] == x for k, x in v.worker.items())
        doc["error"] = error_json(v.beam, v.worker)
    if meets == (v.xfail is not None and v.xfail[0] == "worker"):
        state = "now does what SPEC says" if meets else "does not do what SPEC says"
        raise AssertionError(f"{v.name}: the worker side {state}: {got}")
    if v.xfail is not None:
        doc["xfail"] = v.xfail[1]
    return doc


# ---- writing --------------------------------------------------------------------------------


def _json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def frame_files() -> dict[str, bytes]:
    made: dict[str, tuple[bytes, dict[str, Any]]] = {}
    for name, description, frame in good_vectors():
        made[name] = (frame, describe_good(name, description, frame))
    for name, description, frame, reason, field in bad_vectors():
        made[name] = (frame, describe_bad(name, description, frame, reason, field))
    files: dict[str, bytes] = {}
    for name, (frame, doc) in made.items():
        files[f"{name}.bin"] = frame
        files[f"{name}.json"] = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    return files


def control_files() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for v in control_vectors():
        assert v.name.startswith("good_" if v.valid else "bad_"), v.name
        assert f"{v.name}.bin" not in files, v.name
        files[f"{v.name}.json"] = _json(check_control(v))
        files[f"{v.name}.bin"] = v.frame
    return files


def term_files() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for v in term_vectors():
        assert v.name.startswith("good_" if v.valid else "bad_"), v.name
        assert f"{v.name}.etf" not in files, v.name
        files[f"{v.name}.json"] = _json(check_term(v))
        files[f"{v.name}.etf"] = v.etf
    return files


def write(out_dir: Path, files: dict[str, bytes], suffixes: tuple[str, ...]) -> None:
    """Write ``files`` into ``out_dir`` and remove the files of ``suffixes`` it does not
    name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in out_dir.iterdir():
        if path.is_file() and path.suffix in suffixes and path.name not in files:
            path.unlink()
    for filename, data in sorted(files.items()):
        (out_dir / filename).write_bytes(data)


def main(argv: list[str]) -> int:
    args = argv[1:]
    if args[:1] == ["--root"] and len(args) == 2:
        root, frames_only = Path(args[1]), False
    elif len(args) == 1 and not args[0].startswith("-"):
        root, frames_only = Path(args[0]), True
    elif not args:
        root, frames_only = HERE / "vectors", False
    else:
        print(__doc__, file=sys.stderr)
        return 2
    kinds = [("frame", root, frame_files(), (".bin", ".json"))]
    if not frames_only:  # every check runs before anything is written
        kinds.append(("control", root / "control", control_files(), (".bin", ".json")))
        kinds.append(("term", root / "terms", term_files(), (".etf", ".json")))
    for kind, out_dir, files, suffixes in kinds:
        write(out_dir, files, suffixes)
        names = {f.rsplit(".", 1)[0] for f in files}
        good = sum(1 for n in names if n.startswith("good_"))
        print(f"wrote {good} good and {len(names) - good} bad {kind} vectors to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
