"""Provenance vectors (SPEC §5.4): frames whose header validates and whose provenance
block reads to a known description, or fails at exactly its intended check (P2-P4).

A good one's JSON has ``provenance``: the block as both readers describe it
(``producer``, ``meta``, ``lineage`` oldest first, ``summary``). A bad one's JSON has
``valid: false``, ``stage: "provenance"`` and the ``error`` reading the block gives
(its header validates: ``decode_frame`` reads it)."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import xxhash
from beambridge.errors import HeaderError
from beambridge.etf import encode as etf
from beambridge.header import decode_frame, encode_frame
from beambridge.provenance import read_block

from .frames import describe_good, get, patch, pattern

CREATED_AT = 1_796_241_692_686_260_127
PRODUCER = {"side": "python", "node": "app@host", "os_pid": 4242, "worker": "Bridge.0",
            "version": "0.1.0"}  # fmt: skip
META = {"round": 12, "client": "c7", "weights": [0.5, 0.25]}
ENTRIES = [
    (7, CREATED_AT - 2000, {"handler": "fl.train", "worker": "Bridge.0", "inputs": [11],
                            "frame": 21}),
    (8, CREATED_AT - 1000, {"handler": "fl.aggregate", "worker": "Bridge.1", "inputs": [31]}),
]  # fmt: skip
SUMMARY = (40, CREATED_AT - 90_000, 0x0123456789ABCDEF)


def zlib_term(value: Any) -> bytes:
    """``value`` as a compressed ETF term (tag 80), as term_to_binary(_, [compressed])."""
    plain = etf(value)[1:]
    return b"\x83P" + struct.pack(">I", len(plain)) + zlib.compress(plain)


def section(tag: int, body: bytes) -> bytes:
    return struct.pack("<BI", tag, len(body)) + body


def entry(call: int, at: int, body: dict[str, Any]) -> bytes:
    encoded = etf(body)
    return struct.pack("<HQQ", 18 + len(encoded), call, at) + encoded


def block(*, summary: bool = True) -> bytes:
    lineage = b"".join(entry(*e) for e in ENTRIES)
    out = section(1, etf(PRODUCER)) + section(2, etf(META)) + section(3, lineage)
    return out + (section(4, struct.pack("<QQQ", *SUMMARY)) if summary else b"")


def frame(prov: bytes, **fields: Any) -> bytes:
    return encode_frame(pattern(48, 12), metadata=b"meta", created_at=CREATED_AT, frame_id=77,
                        provenance=prov, **fields)  # fmt: skip


def reseal_block(f: bytes, new_block: bytes) -> bytes:
    """``f`` with its block's bytes replaced (same length) and its checksum fixed."""
    start = 128 + get(f, "metadata_length")
    out = f[:start] + new_block + f[start + len(new_block) :]
    return patch(out, provenance_checksum=xxhash.xxh3_64_intdigest(new_block))


BIG_META = {"config": "abcdefgh" * 200, "round": 4}
REF = struct.pack("<QI", 0x0F0E0D0C0B0A0908, 1801)  # a digest no vector's meta has


def good_vectors() -> list[tuple[str, str, bytes]]:
    return [
        ("good_provenance_holds_meta", "a meta of more than 1024 bytes first in the block: "
         "flag HOLDS_META (bit 16) is set", frame(section(2, etf(BIG_META))
                                                   + section(1, etf(PRODUCER)))),
        ("good_provenance_meta_ref", "the meta named by meta_ref (digest and length), stored "
         "in another frame this reader has not read: found false", frame(
             section(1, etf(PRODUCER)) + section(5, REF))),
        ("good_provenance", "a provenance block with every section: producer, meta, a lineage "
         "of two entries (the older one with its frame) and a summary", frame(block())),
        ("good_provenance_unknown_section", "a block with a section of tag 9 (unknown: skipped) "
         "before the producer", frame(section(9, b"later") + section(1, etf(PRODUCER)))),
    ]  # fmt: skip


def bad_vectors() -> list[tuple[str, str, bytes, str, str]]:
    good = frame(block())
    start = 128 + get(good, "metadata_length")
    size = get(good, "provenance_length")
    flipped = bytearray(good)
    flipped[start + 10] ^= 0x01
    truncated = bytearray(block())
    struct.pack_into("<I", truncated, 1, len(truncated))  # the producer claims the whole block
    twice = section(1, etf(PRODUCER)) + section(1, etf(PRODUCER))
    meta_list = section(2, etf([1, 2, 3]))
    both = section(2, etf(META)) + section(5, REF)
    list_body = entry(9, CREATED_AT, {})[:18] + etf([1, 2])
    list_entry = struct.pack("<H", len(list_body)) + list_body[2:]
    compressed = zlib_term(PRODUCER)
    short_ref = section(5, REF[:11])
    return [
        ("bad_provenance_out_of_bounds", "provenance_length runs past payload_offset",
         patch(good, provenance_length=get(good, "payload_offset") - start + 1),
         "provenance_out_of_bounds", "provenance_length"),
        ("bad_provenance_too_large", "provenance_length 65537",
         patch(good, provenance_length=65537), "provenance_out_of_bounds", "provenance_length"),
        ("bad_provenance_checksum", "a byte of the block changed after sealing",
         bytes(flipped), "provenance_checksum_mismatch", "provenance_checksum"),
        ("bad_provenance_section_past_end", "the producer section claims more than the block",
         reseal_block(good, bytes(truncated)), "bad_provenance", "producer"),
        ("bad_provenance_tag_twice", "the producer section comes twice",
         frame(twice), "bad_provenance", "producer"),
        ("bad_provenance_meta_not_a_map", "the meta section holds a list",
         frame(meta_list), "bad_provenance", "meta"),
        ("bad_provenance_meta_and_ref", "a block with both meta and meta_ref",
         frame(both), "bad_provenance", "meta_ref"),
        ("bad_provenance_meta_ref_size", "a meta_ref of 11 bytes",
         frame(short_ref), "bad_provenance", "meta_ref"),
        ("bad_provenance_entry_not_a_map", "a lineage entry whose body is a list",
         frame(section(3, list_entry)), "bad_provenance", "lineage"),
        ("bad_provenance_compressed_term", "a producer body that is a compressed ETF term "
         "(not a §8.2 tag)", frame(section(1, compressed)), "bad_provenance", "producer"),
    ] if size else []  # fmt: skip


def _described(prov: bytes) -> dict[str, Any]:
    header, _, _ = decode_frame(prov)
    b = read_block(header, prov)
    assert b is not None
    d = b.describe()
    return {k: d[k] for k in ("producer", "meta", "lineage", "summary", "meta_ref")}


def describe_good_provenance(name: str, description: str, f: bytes) -> dict[str, Any]:
    doc = describe_good(name, description, f)
    doc["provenance"] = _described(f)
    return doc


def describe_bad_provenance(
    name: str, description: str, f: bytes, reason: str, field: str
) -> dict[str, Any]:
    header, _, _ = decode_frame(f)  # the header validates
    try:
        b = read_block(header, f)
        assert b is not None
        b.describe()
    except HeaderError as exc:
        if (exc.reason, exc.field) != (reason, field):
            raise AssertionError(
                f"{name}: fails with {exc.reason}/{exc.field}, meant {reason}/{field}"
            ) from exc
    else:
        raise AssertionError(f"{name}: its provenance reads, meant to fail with {reason}")
    return {
        "name": name,
        "description": description,
        "valid": False,
        "stage": "provenance",
        "frame_size": len(f),
        "error": {"reason": reason, "field": field},
    }
