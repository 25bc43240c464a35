"""Data-term vectors (SPEC §9, §10): good terms with the value a receiver makes, bad ones
with the error each side answers, and the JSON that describes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from beambridge.decoder import Decoder
from beambridge.encoder import ResultEncoder
from beambridge.errors import BridgeError
from beambridge.etf import Atom, decode, encode, encode_parts

from .raw_etf import NO_BODY, PID, SLICE, etf, inner, raw_list
from .term_json import MapOf, TensorOf, error_json, term_json

A = Atom


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


def nested_records() -> bytes:
    """NESTED_ROWS as records, the stream written by pyarrow: a struct column with binary
    keys and a list<struct> column with atom keys, each saying so in its field's
    ``beambridge.keys``."""
    import pyarrow as pa

    keys = b"beambridge.keys"
    user = pa.struct([("name", pa.binary()), ("w", pa.float64())])
    item = pa.struct([("qty", pa.int64()), ("sku", pa.binary())])
    schema = pa.schema(
        [
            pa.field("id", pa.int64()),
            pa.field("user", user, metadata={keys: b"binary"}),
            pa.field("items", pa.list_(pa.field("item", item, metadata={keys: b"atom"}))),
        ],
        metadata={keys: b"atom"},
    )
    table = pa.Table.from_pylist(
        [
            {"id": 1, "user": {"name": b"a", "w": 0.5}, "items": [{"qty": 2, "sku": b"x"}, None]},
            {"id": 2, "user": None, "items": None},
            {"id": None, "user": {"name": None, "w": None}, "items": []},
        ],
        schema=schema,
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    return encode((A("$bb_records"), A("rows"), sink.getvalue().to_pybytes()))


NESTED_ROWS = [
    {A("id"): 1, A("user"): {b"name": b"a", b"w": 0.5},
     A("items"): [{A("qty"): 2, A("sku"): b"x"}, None]},
    {A("id"): 2, A("user"): None, A("items"): None},
    {A("id"): None, A("user"): {b"name": None, b"w": None}, A("items"): []},
]  # fmt: skip


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
        good_term("good_records_nested", "a record list with a struct column (binary keys) "
                  "and a list<struct> column (atom keys), nulls at every level",
                  nested_records(), NESTED_ROWS),
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
