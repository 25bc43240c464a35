"""Every file in protocol/vectors/ is a test, by name (SPEC.md §14)."""

from __future__ import annotations

import gc
import json
import runpy
from pathlib import Path
from typing import Any

import pytest
import xxhash
from beambridge.codecs import decompress
from beambridge.errors import ChecksumError, HeaderError
from beambridge.frame import Frame
from beambridge.header import Header, decode_frame
from beambridge.provenance import Block, read_block
from helpers import Slices

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "protocol" / "vectors"
NAMES = sorted(p.stem for p in VECTORS.glob("*.json"))
HEADER_FIELDS = [
    "version_major",
    "version_minor",
    "header_size",
    "format",
    "codec",
    "flags",
    "generation",
    "schema_id",
    "schema_version",
    "metadata_length",
    "payload_offset",
    "payload_length",
    "decoded_length",
    "payload_checksum",
    "created_at",
    "frame_id",
    "provenance_length",
    "provenance_checksum",
    "header_checksum",
]
#: The reasons of SPEC §6's checks 1-17: every one has a ``bad_`` vector.
SPEC_REASONS = {
    "truncated_header",
    "bad_magic",
    "unsupported_version",
    "bad_header_size",
    "unknown_format",
    "unknown_codec",
    "unknown_flags",
    "metadata_too_large",
    "metadata_out_of_bounds",
    "misaligned_payload",
    "payload_overlaps_metadata",
    "length_overflow",
    "payload_out_of_bounds",
    "bad_decoded_length",
    "decoded_too_large",
    "bad_compressed_data",
    "header_checksum_mismatch",
    "checksum_mismatch",
    "provenance_out_of_bounds",
    "provenance_checksum_mismatch",
    "bad_provenance",
}


def load(name: str) -> tuple[bytes, dict[str, Any]]:
    doc = json.loads((VECTORS / f"{name}.json").read_text())
    return (VECTORS / f"{name}.bin").read_bytes(), doc


def check_good(doc: dict[str, Any], header: Header, metadata: bytes, payload: bytes) -> None:
    assert doc["valid"] is True
    for field in HEADER_FIELDS:
        assert getattr(header, field) == doc["header"][field], field
    assert metadata.hex() == doc["metadata_hex"]
    assert len(payload) == doc["header"]["payload_length"]
    assert xxhash.xxh3_64_intdigest(payload) == doc["payload_xxh3"]
    if "payload_hex" in doc:
        assert payload.hex() == doc["payload_hex"]
    else:
        assert len(payload) > 256
    if "decoded_xxh3" in doc:
        decoded = decompress(header.codec, payload, header.decoded_length)
        assert xxhash.xxh3_64_intdigest(decoded) == doc["decoded_xxh3"]


def check_provenance(doc: dict[str, Any], frame: bytes) -> None:
    """The provenance block reads as the vector says (SPEC §5.4), or fails at its check."""
    header, _, _ = decode_frame(frame)
    if doc.get("stage") == "provenance":
        with pytest.raises(HeaderError) as info:
            block = read_block(header, frame)
            assert block is not None
            block.describe()
        assert (info.value.reason, info.value.field) == (
            doc["error"]["reason"],
            doc["error"]["field"],
        )
        return
    block = read_block(header, frame)
    described = None if block is None else block.describe()
    expected = doc.get("provenance")
    if expected is None:
        assert described is None or described == Block().describe()
    else:
        assert described is not None
        assert {k: described[k] for k in expected} == expected


@pytest.mark.parametrize("name", NAMES)
def test_vector(name: str) -> None:
    frame, doc = load(name)
    assert doc["name"] == name
    assert doc["frame_size"] == len(frame)
    if name.startswith("good_"):
        header, metadata, payload = decode_frame(frame)
        check_good(doc, header, metadata, bytes(payload))
        check_provenance(doc, frame)
    elif doc.get("stage") == "provenance":
        check_provenance(doc, frame)
    elif doc.get("stage") == "decompress":
        header, _, payload = decode_frame(frame)
        with pytest.raises(HeaderError) as info:
            decompress(header.codec, payload, header.decoded_length)
        assert (info.value.reason, info.value.field) == (
            doc["error"]["reason"],
            doc["error"]["field"],
        )
    else:
        assert name.startswith("bad_")
        assert doc["valid"] is False
        with pytest.raises(HeaderError) as info:
            decode_frame(frame)
        assert (info.value.reason, info.value.field) == (
            doc["error"]["reason"],
            doc["error"]["field"],
        )
        assert isinstance(info.value, ChecksumError) == (info.value.reason == "checksum_mismatch")
        assert doc["error"]["field"] in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_vector_as_a_frame_in_private_memory(name: str) -> None:
    """`Frame.from_bytes` reads a vector as `decode_frame` does."""
    frame, doc = load(name)
    if doc.get("stage") == "provenance":
        assert Frame.from_bytes(frame).header.provenance_length > 0
    elif doc.get("stage") == "decompress":  # the header is good
        assert Frame.from_bytes(frame).header.codec != 0
    elif doc["valid"]:
        f = Frame.from_bytes(frame)
        check_good(doc, f.header, f.metadata, bytes(f.payload))
        f.release()
    else:
        with pytest.raises(HeaderError) as info:
            Frame.from_bytes(frame)
        assert (info.value.reason, info.value.field) == (
            doc["error"]["reason"],
            doc["error"]["field"],
        )


@pytest.fixture(scope="module")
def slices() -> Any:
    s = Slices()
    yield s
    gc.collect()
    s.close()


@pytest.mark.parametrize("name", [n for n in NAMES if (VECTORS / f"{n}.bin").stat().st_size >= 128])
def test_vector_in_a_slice(name: str, slices: Slices) -> None:
    """The same frame placed at the start of an arena slice of exactly its size reads
    the same way through a peer's read-only mapping (protocol/SPEC.md §3), and a refused
    one leaves no lease held."""
    frame, doc = load(name)
    s = slices.place(frame)
    try:
        if doc["valid"] or doc.get("stage") in ("provenance", "decompress"):
            with slices.read(s, length=len(frame)) as f:
                if doc["valid"]:
                    check_good(doc, f.header, f.metadata, bytes(f.payload))
        else:
            with pytest.raises(HeaderError) as info:
                slices.read(s, length=len(frame))
            assert (info.value.reason, info.value.field) == (
                doc["error"]["reason"],
                doc["error"]["field"],
            )
            del info
        assert slices.leases == 0
    finally:
        slices.arenas.free(s)


def test_vector_set_is_complete() -> None:
    bins = sorted(p.stem for p in VECTORS.glob("*.bin"))
    assert bins == NAMES
    good = [n for n in NAMES if n.startswith("good_")]
    bad = [n for n in NAMES if n.startswith("bad_")]
    assert len(good) + len(bad) == len(NAMES)
    assert len(good) >= 14 and len(bad) >= 16
    reasons = {load(n)[1]["error"]["reason"] for n in bad}
    assert reasons == SPEC_REASONS


def test_vectors_are_up_to_date(tmp_path: Path) -> None:
    """gen_vectors.py is deterministic and the checked-in files are its output."""
    gen = runpy.run_path(str(ROOT / "protocol" / "gen_vectors.py"))
    assert gen["main"](["gen_vectors.py", str(tmp_path)]) == 0
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in VECTORS.iterdir() if p.suffix in (".bin", ".json"))
    for filename in made:
        assert (tmp_path / filename).read_bytes() == (VECTORS / filename).read_bytes(), filename
