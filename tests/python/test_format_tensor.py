"""The tensor format (protocol/formats/tensor.md): single tensors, bundles and COO arrays
written into frames in arena slices by the format's own writers and read back in place
through a peer's read-only mapping; inline and slice forms of the bridge's terms giving
the same Python value (invariant 7); the refusals (object dtypes, malformed
descriptors)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from beambridge import Atom
from beambridge.arena import Slice
from beambridge.decoder import Decoder
from beambridge.encoder import ResultEncoder
from beambridge.errors import EtfError
from beambridge.etf import decode, encode, encode_parts
from beambridge.formats import tensor as tf
from beambridge.header import Format
from beambridge.terms import TAG_SLICE, TAG_SPARSE_COO, TAG_TENSOR, TAG_TENSOR_BUNDLE
from helpers import Slices
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_harness import Loopback

# ---- strategies ----------------------------------------------------------------------------

scalar_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness="?", sizes=(64, 128)),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(endianness="?", min_len=1, max_len=8),
    hnp.unicode_string_dtypes(endianness="?", min_len=1, max_len=5),
)
record_dtypes = hnp.array_dtypes(scalar_dtypes, min_size=1, max_size=4, allow_subarrays=True)
nested_records = hnp.array_dtypes(st.one_of(scalar_dtypes, record_dtypes), min_size=1, max_size=3)
aligned_records = st.lists(
    st.sampled_from(["u1", "<i4", ">f8", "<c8", "S3"]), min_size=1, max_size=4
).map(lambda fs: np.dtype([(f"f{i}", f) for i, f in enumerate(fs)], align=True))
all_dtypes = st.one_of(scalar_dtypes, record_dtypes, nested_records, aligned_records)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
layouts = st.sampled_from(["C", "F", "strided", "transposed"])


@st.composite
def arrays(draw: Any, dtypes: Any = all_dtypes) -> np.ndarray[Any, Any]:
    dtype = draw(dtypes)
    base = draw(hnp.arrays(dtype, draw(shapes)))
    layout = draw(layouts)
    if layout == "F":
        return np.asfortranarray(base)
    if layout == "strided" and base.ndim:
        return base[..., ::2]
    if layout == "transposed":
        return base.T
    return base


def raw(a: np.ndarray[Any, Any]) -> bytes:
    """The array's elements, row-major, as bytes (NaN payloads and all)."""
    return np.ascontiguousarray(a.view(np.dtype((np.void, a.dtype.itemsize)))).tobytes()


def address(a: np.ndarray[Any, Any]) -> int:
    return int(a.__array_interface__["data"][0])


def assert_view_in(a: np.ndarray[Any, Any], sl: Slices, s: Slice) -> None:
    """``a`` is a read-only view into the reader's mapping of slice ``s``, aligned."""
    assert not a.flags.writeable and not a.flags.owndata
    if a.nbytes:
        lo, _ = sl.mapping(s.object_id)
        assert lo + s.offset <= address(a) and address(a) + a.nbytes <= lo + s.offset + s.length
        assert address(a) % tf.ALIGN == 0


def assert_same_array(back: np.ndarray[Any, Any], arr: np.ndarray[Any, Any]) -> None:
    assert type(back) is np.ndarray
    assert back.dtype == arr.dtype and tf.dtype_to_descr(back.dtype) == tf.dtype_to_descr(arr.dtype)
    assert back.dtype.str == arr.dtype.str and back.dtype.itemsize == arr.dtype.itemsize
    assert back.shape == arr.shape
    assert raw(back) == raw(arr)
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        assert back.flags.f_contiguous
    else:
        assert back.flags.c_contiguous


@contextlib.contextmanager
def slices() -> Iterator[Slices]:
    """An owner's arenas and a reader's mapping of them, closed afterwards."""
    sl = Slices(min_arena=1 << 16)
    try:
        yield sl
    finally:
        gc.collect()
        sl.close()


# ---- single tensors through slices --------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays())
def test_a_tensor_round_trips_through_a_slice_as_a_read_only_view(
    arr: np.ndarray[Any, Any],
) -> None:
    with slices() as sl:
        s = tf.write_tensor(sl.arenas, arr)
        frame = sl.read(s)
        assert frame.header.format == Format.TENSOR
        assert frame.header.schema_id == tf.SCHEMA_TENSOR  # every tensor: a descriptor map
        back = tf.read_tensor(frame)
        del frame
        assert_same_array(back, arr)
        assert_view_in(back, sl, s)
        # the lease follows the array: still held while it lives, gone with it
        if back.nbytes:
            assert sl.leases == 1
        del back
        gc.collect()
        assert sl.leases == 0


def test_every_kind_of_dtype_is_preserved_exactly() -> None:
    dtypes = [
        "|b1",
        "|i1",
        ">i2",
        "<i8",
        "|u1",
        ">u4",
        "<f2",
        ">f4",
        "<f8",
        ">c8",
        "<c16",
        "<M8[ns]",
        ">M8[D]",
        "<m8[10ms]",
        "<M8",
        "|S5",
        "<U3",
        ">U2",
        "|V4",
        np.dtype([("x", "<f4"), ("y", ">i2", (2, 2)), ("s", "S2")]),
        np.dtype([("a", "u1"), ("b", "<i8")], align=True),
        np.dtype([("p", [("q", "<u2"), ("r", "|b1")]), ("t", "<M8[s]")]),
        np.dtype(
            {"names": ["a", "b"], "formats": ["<i4", "<i4"], "offsets": [8, 0], "itemsize": 16}
        ),
    ]
    with slices() as sl:
        for spec in dtypes:
            dt = np.dtype(spec)
            arr = np.frombuffer(bytes(range(256)) * dt.itemsize, dtype=dt)[:6].reshape(2, 3)
            for a in (arr, np.asfortranarray(arr), arr[:, ::2], arr[0, 0, ...]):
                back = tf.read_tensor(sl.read(tf.write_tensor(sl.arenas, a)))
                assert_same_array(back, a)
                assert back.dtype.fields == a.dtype.fields
                assert back.dtype.itemsize == a.dtype.itemsize
                del back


def test_empty_and_zero_dimensional_tensors() -> None:
    empty = [
        np.zeros((0,), "<f4"),
        np.zeros((3, 0, 2), ">i2", order="F"),
        np.array(5, ">u8"),
        np.array(b"ab"),
        np.zeros((0,), np.dtype([("a", "<i4")])),
    ]
    with slices() as sl:
        for a in empty:
            back = tf.read_tensor(sl.read(tf.write_tensor(sl.arenas, a)))
            assert_same_array(back, a)
            assert not back.flags.writeable
            del back


def test_schema_0_is_not_a_tensor_schema() -> None:
    """``{dtype, shape}`` (schema 0) is only the layout of packed frames now."""
    data = np.arange(6, dtype="<i4").tobytes()
    with slices() as sl:
        s = sl.put(data, metadata=encode((b"<i4", [2, 3])), format=Format.TENSOR)
        for read in (tf.read_tensor, tf.read):
            with pytest.raises(EtfError) as info:
                read(sl.read(s))
            assert info.value.field == "schema_id"
            del info
        gc.collect()
        assert sl.leases == 0


def test_a_non_contiguous_input_is_copied_once_in_the_order_recorded() -> None:
    base = np.arange(40, dtype=">f8").reshape(5, 8)
    view = base[::2, 1::3]
    p = tf.plan(view)
    assert decode(p.metadata)[b"order"] == b"C"
    with slices() as sl:
        back = tf.read_tensor(sl.read(tf.write_tensor(sl.arenas, view)))
        assert back.flags.c_contiguous and back.tolist() == view.tolist()
        del back


def test_writers_take_only_their_own_kind_of_value() -> None:
    with slices() as sl:
        with pytest.raises(TypeError, match=r"numpy\.ndarray"):
            tf.write_tensor(sl.arenas, [1, 2])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="mapping"):
            tf.write_bundle(sl.arenas, [np.zeros(1)])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="COO"):
            tf.write_coo(sl.arenas, np.zeros(1))  # type: ignore[arg-type]
        assert sl.arenas.stats["allocs"] == 0  # refused before a slice was taken


# ---- bundles and COO ---------------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(min_size=1, max_size=8), arrays(), max_size=5))
def test_a_bundle_round_trips_in_one_slice_each_tensor_aligned(
    tensors: dict[str, np.ndarray[Any, Any]],
) -> None:
    bundle = tf.Bundle(tensors)
    with slices() as sl:
        s = tf.write_bundle(sl.arenas, bundle)
        frame = sl.read(s)
        assert (frame.header.schema_id, frame.header.schema_version) == (tf.SCHEMA_BUNDLE, 1)
        back = tf.read_bundle(frame)
        del frame
        assert type(back) is tf.Bundle and list(back) == list(tensors)
        for name, arr in tensors.items():
            assert_same_array(back[name], arr)
            assert_view_in(back[name], sl, s)
        del back


def test_a_state_dict_bundle() -> None:
    state = {
        "layer1.weight": np.random.default_rng(1).standard_normal((64, 33), np.float32),
        "layer1.bias": np.zeros(33, np.float32),
        "step": np.array(7, np.int64),
        "mask": np.ones((3, 3), bool),
    }
    with slices() as sl:
        back = tf.read(sl.read(tf.write_bundle(sl.arenas, state)))
        assert isinstance(back, tf.Bundle)
        offsets = [address(back[n]) - address(back["layer1.weight"]) for n in state]
        assert all(o % 64 == 0 for o in offsets) and offsets == sorted(offsets)
        for name in state:
            assert_same_array(back[name], state[name])
        del back


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from(["<f8", ">i4", "|b1", "<c8"]),
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    )
)
def test_coo_round_trips(dense: np.ndarray[Any, Any]) -> None:
    coo = tf.COO.from_dense(dense)
    with slices() as sl:
        frame = sl.read(tf.write_coo(sl.arenas, coo))
        assert frame.header.schema_id == tf.SCHEMA_COO
        back = tf.read_coo(frame)
        del frame
        assert back.shape == dense.shape and back.nnz == coo.nnz
        assert_same_array(back.indices, coo.indices)
        assert_same_array(back.values, coo.values)
        np.testing.assert_array_equal(back.todense(), dense)
        del back


def test_coo_checks_its_parts() -> None:
    with pytest.raises(ValueError, match="outside"):
        tf.COO(np.array([[0, 3]]), np.array([1.0, 2.0]), (3,))
    with pytest.raises(ValueError, match="integer"):
        tf.COO(np.array([[0.0]]), np.array([1.0]), (3,))
    with pytest.raises(ValueError, match="one value per index"):
        tf.COO(np.array([[0, 1]]), np.array([1.0]), (3,))


# ---- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arr",
    [
        np.array([object(), 1], dtype=object),
        np.zeros(2, np.dtype([("a", "O"), ("b", "<i4")])),
        np.zeros(2, np.longdouble),
        np.array(["a"], dtype=np.dtypes.StringDType()),
        np.zeros(1, np.dtype({"names": ["a"], "formats": ["<i4"], "titles": [3]})),
    ],
)
def test_dtypes_that_would_need_pickle_or_have_no_fixed_layout_are_refused(
    arr: np.ndarray[Any, Any],
) -> None:
    with pytest.raises(tf.UnsupportedDtypeError) as info:
        tf.plan(arr)
    err = info.value
    assert isinstance(err, TypeError) and err.reason == "unsupported_dtype"
    assert str(arr.dtype) in str(err) and ";" in str(err)  # names the dtype, says what to do
    # the result encoder refuses it the same way, inline or not (the worker's bad_call)
    loop = Loopback()
    for threshold in (0, 1 << 30):
        with pytest.raises(TypeError, match="unsupported_dtype"):
            loop.result(arr, threshold=threshold)
    loop.close()
    with pytest.raises(TypeError, match="unsupported_dtype"):
        encode_parts(arr, ResultEncoder())
    with pytest.raises(TypeError, match="pickle"):
        tf.plan(np.array([None]))


D = {b"dtype": b"<f4", b"shape": [2], b"order": b"C"}
INDICES = {b"name": b"indices", b"dtype": b"<i8", b"shape": [1, 1], b"order": b"C", b"offset": 0}


@pytest.mark.parametrize(
    ("metadata", "payload", "schema", "version", "field"),
    [
        ({**D, b"dtype": b"|O"}, b"\0" * 8, 1, 1, "dtype"),
        ({**D, b"dtype": b"|i4"}, b"\0" * 8, 1, 1, "dtype"),
        ({**D, b"dtype": b"<M8[1ms]"}, b"\0" * 8, 1, 1, "dtype"),
        ({**D, b"dtype": b"<f4,<f4"}, b"\0" * 8, 1, 1, "dtype"),
        ({**D, b"dtype": (b"struct", 4, [(b"a", b"<f8", 0)])}, b"\0" * 8, 1, 1, "dtype"),
        (
            {**D, b"dtype": (b"struct", 8, [(b"a", b"<f4", 0), (b"a", b"<f4", 4)])},
            b"\0" * 8,
            1,
            1,
            "dtype",
        ),
        ({**D, b"dtype": (b"pickle", b"...")}, b"\0" * 8, 1, 1, "dtype"),
        ({**D, b"shape": [3]}, b"\0" * 8, 1, 1, "payload_length"),
        ({**D, b"shape": [-1]}, b"\0" * 8, 1, 1, "shape"),
        ({**D, b"shape": [2**40, 2**40]}, b"\0" * 8, 1, 1, "payload_length"),
        ({**D, b"shape": [1] * 33}, b"\0" * 4, 1, 1, "shape"),
        ({**D, b"order": b"K"}, b"\0" * 8, 1, 1, "order"),
        ({b"shape": [2]}, b"\0" * 8, 1, 1, "descriptor"),
        (D, b"\0" * 8, 9, 1, "schema_id"),
        (D, b"\0" * 8, 1, 2, "schema_version"),
        ({b"tensors": [{b"name": b"a", **D, b"offset": 8}]}, b"\0" * 16, 2, 1, "offset"),
        (
            {b"tensors": [{b"name": b"a", **D, b"offset": 0}, {b"name": b"a", **D, b"offset": 64}]},
            b"\0" * 72,
            2,
            1,
            "name",
        ),
        ({b"tensors": [{b"name": b"a", **D, b"offset": 0}]}, b"\0" * 4, 2, 1, "shape"),
        (
            {
                b"shape": [3],
                b"tensors": [INDICES, {b"name": b"values", **D, b"shape": [1], b"offset": 64}],
            },
            (5).to_bytes(8, "little") + bytes(60),
            3,
            1,
            "coo",
        ),
    ],
)
def test_malformed_descriptors_are_refused(
    metadata: Any, payload: bytes, schema: int, version: int, field: str
) -> None:
    with slices() as sl:
        s = sl.put(
            payload,
            metadata=encode(metadata),
            format=Format.TENSOR,
            schema_id=schema,
            schema_version=version,
        )
        with pytest.raises(EtfError) as info:
            tf.read(sl.read(s))
        assert info.value.reason == "bad_term" and info.value.field == field, info.value
        del info
        gc.collect()
        assert sl.leases == 0


def test_descriptor_errors_never_escape_as_other_exceptions() -> None:
    junk: list[Any] = [
        b"",
        b"<",
        b"<f",
        b"<f3",
        b"|b2",
        b"<i16",
        b"<U0",
        b"|S99999999999",
        b"<m8[xs]",
        b"<f4[s]",
        b"\xff",
        1,
        None,
        [],
        (b"struct",),
        (b"struct", 0, []),
        (b"struct", 4, [(b"", b"<i4", 0)]),
        (b"struct", 4, [(b"a", (b"subarray", b"<i4", [2]), 0)]),
        (b"struct", 4, [(b"a", b"<i4", -1)]),
    ]
    for descr in junk:
        with pytest.raises(EtfError):
            tf.dtype_from_descr(descr)


# ---- the bridge's terms: inline and slice forms give the same value (invariant 7) ---------


def describe(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return (
            type(v),
            v.dtype.str,
            tf.dtype_to_descr(v.dtype),
            v.shape,
            v.flags.writeable,
            v.flags.c_contiguous,
            v.flags.f_contiguous,
            raw(v),
        )
    if isinstance(v, tf.Bundle):
        return (type(v), [(k, describe(a)) for k, a in v.items()])
    if isinstance(v, tf.COO):
        return (type(v), v.shape, describe(v.indices), describe(v.values))
    raise AssertionError(type(v))


def assert_view_in_slice(a: np.ndarray[Any, Any], loop: Loopback, entry: Any) -> None:
    """``a`` lies in the payload of the slice ``entry`` names, in the BEAM's mapping."""
    assert not a.flags.writeable and not a.flags.owndata
    _, object_id, offset, length, _generation, _ticket = entry
    start = loop.beam.peers.base(object_id) + offset
    assert start < address(a) and address(a) + a.nbytes <= start + length
    assert address(a) % tf.ALIGN == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        arrays(),
        st.dictionaries(st.text(min_size=1, max_size=4), arrays(), max_size=3).map(tf.Bundle),
        hnp.arrays("<f4", (3, 4)).map(tf.COO.from_dense),
    )
)
def test_inline_and_slice_forms_give_the_same_python_value(value: Any) -> None:
    inline_loop, slice_loop = Loopback(1 << 40), Loopback(1)
    try:
        inline_term = inline_loop.result(value)
        slice_term = slice_loop.result(value)
        assert inline_term[0] in (TAG_TENSOR, TAG_TENSOR_BUNDLE, TAG_SPARSE_COO)
        payload = tf.plan(value).nbytes
        assert (slice_term[0] == TAG_SLICE) == (payload > 0)
        inline, in_slice = inline_loop.back(inline_term), slice_loop.back(slice_term)
        assert describe(inline) == describe(in_slice)
        for got in (inline, in_slice):
            if isinstance(value, np.ndarray):
                assert_same_array(got, value)
                assert not got.flags.writeable
            elif isinstance(value, tf.COO):
                assert got.shape == value.shape
                assert_same_array(got.indices, value.indices)
                assert_same_array(got.values, value.values)
            else:
                assert list(got) == list(value)
                for name in value:
                    assert_same_array(got[name], value[name])
        del inline, in_slice, got
        gc.collect()
        slice_loop.beam.end_leases()
        assert slice_loop.beam.tickets == {}  # every lease ended once the values went
    finally:
        inline_loop.close()
        slice_loop.close()


def test_a_slice_argument_is_a_view_in_the_mapping_and_keeps_its_lease() -> None:
    arr = np.asfortranarray(np.arange(20000, dtype=">i4").reshape(100, 200))
    loop = Loopback(1024)
    term = loop.result(arr)
    assert term[:2] == (TAG_SLICE, Atom("tensor"))
    back = loop.back(term)
    assert_view_in_slice(back, loop, loop.entries[0])
    assert back.flags.f_contiguous and back.dtype.str == ">i4"
    assert len(loop.beam.tickets) == 1  # the lease follows the array
    del back
    gc.collect()
    loop.beam.end_leases()
    assert loop.beam.tickets == {}
    loop.close()


def test_a_handle_kind_must_match_the_frame_schema() -> None:
    loop = Loopback(16)
    term = loop.result(np.zeros(4096, ">f4"))
    for kind in ("tensor_bundle", "sparse_coo"):
        with pytest.raises(EtfError) as info:
            loop.back((TAG_SLICE, Atom(kind), term[2]))
        assert info.value.field == "schema_id"
        del info
    gc.collect()
    loop.close()


def test_inline_terms_from_the_peer_are_checked() -> None:
    args = Decoder()
    good = (TAG_TENSOR, {b"dtype": b">u2", b"shape": [2], b"order": b"F"}, b"\x00\x01\x00\x02")
    assert args.decode(good).tolist() == [1, 2]
    for bad in [
        (TAG_TENSOR, b"<u2", [2], b"\x00\x01\x00\x02"),  # the legacy 4-tuple: gone
        (TAG_TENSOR, {b"dtype": b">u2", b"shape": [3]}, b"\x00\x01\x00\x02"),
        (TAG_TENSOR, {b"dtype": b"|O", b"shape": [1]}, b"\x00" * 8),
        (TAG_TENSOR, [b">u2", [2]], b"\x00" * 4),
        (TAG_TENSOR_BUNDLE, [(b"a", good[1], good[2]), (b"a", good[1], good[2])]),
        (TAG_TENSOR_BUNDLE, [(b"\xff", good[1], good[2])]),
        (TAG_TENSOR_BUNDLE, {b"a": good}),
        (TAG_SPARSE_COO, [2], [(b"values", good[1], good[2])]),
        (
            TAG_SPARSE_COO,
            [1],
            [
                (b"indices", {b"dtype": b"<i8", b"shape": [1, 1]}, (1).to_bytes(8, "little")),
                (b"values", {b"dtype": b"|u1", b"shape": [1]}, b"\x07"),
            ],
        ),
    ]:
        with pytest.raises(EtfError):
            args.decode(bad)
    coo = args.decode(
        (
            TAG_SPARSE_COO,
            [2],
            [
                (b"indices", {b"dtype": b"<i8", b"shape": [1, 1]}, (1).to_bytes(8, "little")),
                (b"values", {b"dtype": b"|u1", b"shape": [1]}, b"\x07"),
            ],
        )
    )
    assert isinstance(coo, tf.COO) and coo.todense().tolist() == [0, 7]


def test_the_module_examples_run() -> None:
    import doctest

    result = doctest.testmod(tf, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
