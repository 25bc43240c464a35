"""Every file in protocol/vectors/ is a test, by name (SPEC.md §6)."""

from __future__ import annotations

import json
import runpy
import struct
from pathlib import Path
from typing import Any

import pytest
import xxhash
from beambridge.control_block import OFF_WRITER_GENERATION, OFF_WRITER_STATE, WriterState
from beambridge.errors import ChecksumError, HeaderError
from beambridge.header import Header, decode_frame
from beambridge.region import Region
from helpers import PREFIX

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "protocol" / "vectors"
NAMES = sorted(p.stem for p in VECTORS.glob("*.json"))
HEADER_FIELDS = [
    "version_major", "version_minor", "header_size", "format", "codec", "flags",
    "generation", "schema_id", "schema_version", "metadata_length", "payload_offset",
    "payload_length", "decoded_length", "payload_checksum", "header_checksum",
]  # fmt: skip
SPEC_REASONS = {
    "truncated_header", "bad_magic", "unsupported_version", "bad_header_size",
    "unknown_format", "unknown_codec", "unknown_flags", "metadata_too_large",
    "metadata_out_of_bounds", "misaligned_payload", "payload_overlaps_metadata",
    "length_overflow", "payload_out_of_bounds", "bad_decoded_length", "decoded_too_large",
    "header_checksum_mismatch", "checksum_mismatch",
}  # fmt: skip


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


@pytest.mark.parametrize("name", NAMES)
def test_vector(name: str) -> None:
    frame, doc = load(name)
    assert doc["name"] == name
    assert doc["frame_size"] == len(frame)
    if name.startswith("good_"):
        header, metadata, payload = decode_frame(frame)
        check_good(doc, header, metadata, bytes(payload))
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


@pytest.mark.parametrize("name", [n for n in NAMES if (VECTORS / f"{n}.bin").stat().st_size >= 128])
def test_vector_through_a_region(name: str) -> None:
    """The same frame placed in a region's frame area reads the same way."""
    frame, doc = load(name)
    generation = struct.unpack_from("<Q", frame, 16)[0]
    with Region.create(64 + len(frame), prefix=PREFIX) as region:
        mm = region._mm
        mm[64:] = frame
        from beambridge import _atomic

        _atomic.store_u64(mm, OFF_WRITER_GENERATION, generation)
        _atomic.store_u32(mm, OFF_WRITER_STATE, WriterState.PUBLISHED)
        if doc["valid"]:
            with region.read_frame() as f:
                check_good(doc, f.header, f.metadata, bytes(f.payload))
        else:
            with pytest.raises(HeaderError) as info:
                region.read_frame()
            assert (info.value.reason, info.value.field) == (
                doc["error"]["reason"],
                doc["error"]["field"],
            )
        assert region.control_block().reader_leases == 0


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
