"""The control channel's ETF encoder and decoder (protocol/SPEC.md §8.2, §10): round
trips, refusals, hostile frames, and a cross-check against the real :erlang
implementation."""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from beambridge import Atom, BridgeError, EtfError
from beambridge.etf import MAX_BIG_BYTES, MAX_DEPTH, decode, encode, encode_parts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# ---- canonical form: compares values with their ETF type, so 1, 1.0 and True differ ----


def canon(v: Any) -> Any:
    """What a value is as an Erlang term (str and bytes are both binaries)."""
    if v is True or v is False or v is None:
        return ("a", {True: "true", False: "false", None: "nil"}[v])
    if isinstance(v, Atom):
        return ("a", str(v))
    if isinstance(v, int):
        return ("i", v)
    if isinstance(v, float):
        return ("f", struct.pack(">d", v))
    if isinstance(v, str):
        return ("b", v.encode())
    if isinstance(v, (bytes, bytearray, memoryview)):
        return ("b", bytes(v))
    if isinstance(v, list):
        return ("l", tuple(canon(x) for x in v))
    if isinstance(v, tuple):
        return ("t", tuple(canon(x) for x in v))
    if isinstance(v, dict):
        return ("m", frozenset((canon(k), canon(x)) for k, x in v.items()))
    raise TypeError(type(v))


# ---- strategies ----------------------------------------------------------------------------

atoms = st.text(max_size=40).filter(lambda s: s not in ("true", "false", "nil")).map(Atom)
scalars = (
    st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-(2**31) - 2, max_value=2**31 + 2)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
    | atoms
    | st.binary(max_size=64)
)
hashable = st.recursive(scalars, lambda c: st.tuples(c, c) | st.tuples(c), max_leaves=6)
terms = st.recursive(
    scalars,
    lambda c: (
        st.lists(c, max_size=6)
        | st.lists(c, max_size=6).map(tuple)
        | st.dictionaries(hashable, c, max_size=5)
    ),
    max_leaves=30,
)


@given(terms)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(value: Any) -> None:
    assert canon(decode(encode(value))) == canon(value)


@given(st.text(max_size=50))
def test_str_goes_as_a_utf8_binary(text: str) -> None:
    assert decode(encode(text)) == text.encode()


@given(st.binary(max_size=300))
def test_bytes_likes_are_binaries(data: bytes) -> None:
    assert encode(bytearray(data)) == encode(data) == encode(memoryview(data))
    assert decode(encode(data)) == data and type(decode(encode(data))) is bytes


def test_memoryview_of_other_formats_and_non_contiguous() -> None:
    import array

    arr = array.array("i", [1, 2, 3])
    assert decode(encode(memoryview(arr))) == arr.tobytes()
    assert decode(encode(memoryview(b"abcdef")[::2])) == b"ace"


@given(st.integers())
def test_integers_use_the_smallest_tag(n: int) -> None:
    raw = encode(n)
    if 0 <= n <= 255:
        assert raw[1] == 97
    elif -(2**31) <= n < 2**31:
        assert raw[1] == 98
    elif (abs(n).bit_length() + 7) // 8 <= 255:
        assert raw[1] == 110
    else:
        assert raw[1] == 111


def test_special_atoms_and_atom_type() -> None:
    assert decode(encode(True)) is True and decode(encode(False)) is False
    assert decode(encode(None)) is None
    value = decode(encode(Atom("ok")))
    assert type(value) is Atom and value == "ok" and repr(value) == "Atom('ok')"
    # ATOM and SMALL_ATOM (Latin-1), as OTP's term_to_binary writes plain atoms
    assert decode(b"\x83d\x00\x03f\xf6\xf6") == Atom("föö")
    assert decode(b"\x83s\x04true") is True
    long_multibyte = Atom("é" * 255)  # 510 bytes of UTF-8: ATOM_UTF8 with a u16 length
    assert encode(long_multibyte)[1] == 118
    assert decode(encode(long_multibyte)) == long_multibyte


def test_string_ext_is_a_list_of_ints() -> None:
    assert decode(b"\x83k\x00\x03\x01\x02\xff") == [1, 2, 255]
    assert decode(b"\x83k\x00\x00") == []


def test_encode_refuses_what_etf_cannot_carry() -> None:
    with pytest.raises(TypeError, match=r"cannot send <class 'set'> to Elixir"):
        encode({1, 2})
    with pytest.raises(TypeError, match="object"):
        encode([1, object()])
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="NaN or infinity"):
            encode(bad)
    with pytest.raises(ValueError, match="at most 255"):
        encode(Atom("a" * 256))
    with pytest.raises(ValueError, match="8192 bytes of digits"):
        encode(2 ** (8 * MAX_BIG_BYTES))
    assert decode(encode(2 ** (8 * MAX_BIG_BYTES) - 1)) == 2 ** (8 * MAX_BIG_BYTES) - 1
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="deeper than 512"):
        encode(loop)


def test_subclasses_travel_as_their_base_type() -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 300

    class MyStr(str):
        pass

    assert decode(encode([Color.RED, MyStr("x")])) == [300, b"x"]


def test_big_binaries_are_not_copied_while_encoding() -> None:
    big = bytes(10 << 20)
    parts = encode_parts([big])
    assert any(p is big for p in parts)
    start = time.perf_counter()
    assert len(encode(big)) == len(big) + 6
    assert time.perf_counter() - start < 1.0


# ---- refusals and hostile frames --------------------------------------------------------

REFUSED = {
    "pid": b"\x83X\x64\x00\x0dnonode@nohost\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00",
    "reference": b"\x83Z\x00\x01d\x00\x0dnonode@nohost\x00\x00\x00\x00\x00\x00\x00\x01",
    "export": b"\x83qd\x00\x01md\x00\x01fa\x01",
    "bit_binary": b"\x83M\x00\x00\x00\x01\x03\xe0",
    "old_float": b"\x83c" + b"1.50000000000000000000e+00" + bytes(5),
    "compressed": b"\x83P\x00\x00\x00\x01x\x9c\x4b\x04\x00\x00\x62\x00\x62",
    "improper_list": b"\x83l\x00\x00\x00\x01a\x01a\x02",
    "list_without_tail": b"\x83l\x00\x00\x00\x01a\x01",
    "trailing_bytes": b"\x83a\x01a\x02",
    "no_version": b"a\x01",
    "empty": b"",
    "bad_version": b"\x84a\x01",
    "nan": b"\x83F" + struct.pack(">d", math.nan),
    "inf": b"\x83F" + struct.pack(">d", math.inf),
    "bad_utf8_atom": b"\x83w\x02\xc3\x28",
    "atom_too_long": b"\x83d\x01\x00" + b"a" * 256,
    "big_bad_sign": b"\x83n\x01\x02\x05",
    "large_big_over_limit": b"\x83o" + (MAX_BIG_BYTES + 1).to_bytes(4, "big") + b"\x00"
    + b"\x01" * (MAX_BIG_BYTES + 1),
    "map_key_collision": b"\x83t\x00\x00\x00\x02a\x01a\x02F?\xf0\x00\x00\x00\x00\x00\x00a\x03",
    "unhashable_key": b"\x83t\x00\x00\x00\x01l\x00\x00\x00\x01a\x01ja\x01",
    "list_claims_2_32": b"\x83l\xff\xff\xff\xffj",
    "tuple_claims_2_32": b"\x83i\xff\xff\xff\xff",
    "map_claims_2_32": b"\x83t\xff\xff\xff\xff",
    "binary_claims_2_32": b"\x83m\xff\xff\xff\xffab",
    "string_runs_past": b"\x83k\xff\xffab",
    "atom_runs_past": b"\x83w\xffab",
    "large_big_runs_past": b"\x83o\x00\x00\x10\x00\x00\x01",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused(name: str) -> None:
    with pytest.raises(EtfError) as info:
        decode(REFUSED[name])
    err = info.value
    assert isinstance(err, BridgeError) and isinstance(err, ValueError)
    assert err.reason == "bad_term" and err.field and str(err).startswith("bad_term: ")


def test_refused_tag_is_named() -> None:
    with pytest.raises(EtfError, match=r"NEW_PID \(88\) at offset 1 is not allowed") as info:
        decode(REFUSED["pid"])
    assert info.value.field == "tag" and info.value.value == 88


def test_huge_claims_fail_fast_without_allocating() -> None:
    start = time.perf_counter()
    for name in ("list_claims_2_32", "tuple_claims_2_32", "map_claims_2_32"):
        with pytest.raises(EtfError, match="claims 4294967295 elements"):
            decode(REFUSED[name])
    assert time.perf_counter() - start < 0.05


def test_large_big_at_the_limit_is_accepted() -> None:
    frame = b"\x83o" + MAX_BIG_BYTES.to_bytes(4, "big") + b"\x01" + b"\xff" * MAX_BIG_BYTES
    assert decode(frame) == -(2 ** (8 * MAX_BIG_BYTES) - 1)


def test_depth_limit() -> None:
    ok = b"\x83" + b"l\x00\x00\x00\x01" * MAX_DEPTH + b"a\x01" + b"j" * MAX_DEPTH
    value = decode(ok)
    for _ in range(MAX_DEPTH):
        value = value[0]
    assert value == 1
    deep = b"\x83" + b"l\x00\x00\x00\x01" * (MAX_DEPTH + 1) + b"a\x01" + b"j" * (MAX_DEPTH + 1)
    with pytest.raises(EtfError, match="deeper than 512") as info:
        decode(deep)
    assert info.value.field == "depth"
    tuples = b"\x83" + b"h\x01" * (MAX_DEPTH + 1) + b"a\x01"
    with pytest.raises(EtfError, match="deeper"):
        decode(tuples)
    with pytest.raises(EtfError, match="deeper than 3"):
        decode(b"\x83" + b"h\x01" * 4 + b"a\x01", max_depth=3)
    # a caller asking for more depth than Python's stack still gets EtfError
    very = b"\x83" + b"h\x01" * 100_000 + b"a\x01"
    with pytest.raises(EtfError):
        decode(very, max_depth=10**6)


@given(terms)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_every_truncation_is_refused(value: Any) -> None:
    frame = encode(value)
    for cut in range(len(frame)):
        with pytest.raises(EtfError):
            decode(frame[:cut])


@given(terms, st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_frames_decode_or_raise_etf_error(value: Any, data: st.DataObject) -> None:
    frame = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] = data.draw(st.integers(0, 255))
    with contextlib.suppress(EtfError):
        decode(bytes(frame))


@given(st.binary(max_size=64))
@settings(max_examples=1000)
def test_random_frames_decode_or_raise_etf_error(tail: bytes) -> None:
    start = time.perf_counter()
    with contextlib.suppress(EtfError):
        decode(b"\x83" + tail)
    assert time.perf_counter() - start < 0.5


@given(st.lists(st.sampled_from([b"l\xff\xff\xff\xff", b"h\xff", b"t\x00\x00\x00\x10",
                                 b"k\x00\x09", b"m\x00\x00\x01\x00", b"a\x01", b"j"]),
                max_size=12))  # fmt: skip
def test_header_soup_decodes_or_raises_etf_error(pieces: list[bytes]) -> None:
    with contextlib.suppress(EtfError):
        decode(b"\x83" + b"".join(pieces))


# ---- cross-check against the BEAM ------------------------------------------------------

ELIXIR = r"""
defmodule D do
  def d(x) when is_integer(x), do: "i#{Integer.to_string(x, 16)};"
  def d(x) when is_float(x), do: "f#{Base.encode16(<<x::float>>, case: :lower)};"
  def d(x) when is_atom(x), do: "a#{Base.encode16(Atom.to_string(x), case: :lower)};"
  def d(x) when is_binary(x), do: "b#{Base.encode16(x, case: :lower)};"
  def d(x) when is_list(x), do: "l#{length(x)};" <> Enum.map_join(x, &d/1)
  def d(x) when is_tuple(x), do: "t#{tuple_size(x)};" <> Enum.map_join(Tuple.to_list(x), &d/1)
  def d(x) when is_map(x),
    do: "m#{map_size(x)};" <> Enum.map_join(x, fn {k, v} -> d(k) <> d(v) end)
  def hex(b), do: Base.encode16(b, case: :lower)
end

# 1. terms Python encoded: decode, describe, re-encode
for line <- File.read!(hd(System.argv())) |> String.split("\n", trim: true) do
  bin = Base.decode16!(line, case: :lower)
  try do
    t = :erlang.binary_to_term(bin)
    IO.puts("P #{D.hex(:erlang.term_to_binary(t))} #{D.d(t)}")
  rescue
    e -> IO.puts("P ERR #{Exception.message(e)}")
  end
end

# 2. terms Erlang encodes: Python must decode them to the described value
big = Enum.reduce(1..100, 1, fn _, a -> a * 1_000_000_007 end)
terms = [
  0, 255, 256, -1, 2_147_483_647, -2_147_483_648, 2_147_483_648, -2_147_483_649,
  18_446_744_073_709_551_616, -18_446_744_073_709_551_616, big, -big,
  Integer.pow(2, 2040) - 1, Integer.pow(2, 2048), -Integer.pow(2, 8000),
  1.5, -0.0, 0.0, 1.0e308, 5.0e-324, -2.2250738585072014e-308,
  :foo, :"föö", :"日本", true, false, nil, :"", String.to_atom(String.duplicate("a", 255)),
  String.to_atom(String.duplicate("é", 255)), :"with space",
  "", "hello", <<0, 255>>, :binary.copy(<<1, 2>>, 40_000),
  [], [1, 2, 3], 'abc', Enum.to_list(0..300), [1, :a, "b", 2.5], [[[]]], [-1, 256],
  {}, {1}, Tuple.duplicate(0, 300), {:ok, {:error, [nil]}},
  %{}, %{a: 1, b: [2]}, Map.new(1..40, &{&1, Integer.to_string(&1)}),
  %{"k" => %{nested: {1, 2.5}}}, %{{1, 2} => :tuple_key, 1.5 => :float_key}
]
for t <- terms do
  IO.puts("E #{D.hex(:erlang.term_to_binary(t))} #{D.d(t)}")
  IO.puts("E #{D.hex(:erlang.term_to_binary(t, minor_version: 2))} #{D.d(t)}")
end

# 3. terms Python must refuse
refused = [
  self(), make_ref(), fn -> 1 end, &Enum.map/2, [1 | 2], [1, 2 | :tail], <<1::3>>,
  %{[1] => 1}, %{1 => :a, 1.0 => :b}, Integer.pow(2, 8 * 8193)
] |> Enum.map(&:erlang.term_to_binary/1)
extra = [
  :erlang.term_to_binary(String.duplicate("a", 1000), [:compressed]),
  :erlang.term_to_binary(1.5, minor_version: 0)
]
for bin <- refused ++ extra, do: IO.puts("R #{D.hex(bin)}")
"""


def parse_description(text: str) -> Any:
    pos = 0

    def item() -> Any:
        nonlocal pos
        tag = text[pos]
        end = text.index(";", pos)
        body = text[pos + 1 : end]
        pos = end + 1
        if tag == "i":
            return int(body, 16)
        if tag == "f":
            return struct.unpack(">d", bytes.fromhex(body))[0]
        if tag == "a":
            name = bytes.fromhex(body).decode()
            return {"true": True, "false": False, "nil": None}.get(name, Atom(name))
        if tag == "b":
            return bytes.fromhex(body)
        n = int(body)
        if tag == "l":
            return [item() for _ in range(n)]
        if tag == "t":
            return tuple(item() for _ in range(n))
        assert tag == "m"
        pairs = [(item(), item()) for _ in range(n)]
        return dict(pairs)

    value = item()
    assert pos == len(text)
    return value


def random_term(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(14 if depth < 4 else 9)
    if kind == 0:
        return rng.choice([0, 1, 255, 256, -1, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1])
    if kind == 1:
        bits = rng.choice([8, 31, 33, 64, 65, 2040, 2048, 2049, 8 * MAX_BIG_BYTES])
        return rng.getrandbits(bits) * rng.choice([1, -1])
    if kind == 2:
        return rng.choice([0.0, -0.0, 1.5, 1e308, 5e-324, -2.5e-300, math.pi, rng.random()])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        size = rng.choice([0, 1, 10, 255])
        alphabet = rng.choice(["ab_", "éü", "日本語", "\U0001f600x"])
        text = "".join(rng.choice(alphabet) for _ in range(size))
        return Atom(text) if text not in ("true", "false", "nil") else Atom("x")
    if kind == 5:
        return rng.randbytes(rng.choice([0, 1, 17, 300]))
    if kind == 6:
        return rng.choice(["", "héllo", "日本"])
    if kind == 7:
        return [rng.randrange(256) for _ in range(rng.choice([1, 3, 300]))]  # STRING in Erlang
    if kind == 8:
        return rng.randrange(-(2**31), 2**31)
    if kind == 9:
        return [random_term(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 10:
        return tuple(random_term(rng, depth + 1) for _ in range(rng.randrange(5)))
    if kind == 11:
        return tuple(range(rng.choice([255, 256, 300])))
    if kind == 12:
        return {rng.randbytes(3): random_term(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {Atom(f"k{i}"): i for i in range(rng.choice([1, 33, 40]))}


def erlang_bytes_equal_ours(v: Any) -> bool:
    """Where term_to_binary must write exactly our bytes: no atoms (OTP writes ATOM_EXT),
    no maps of 2+ keys (its key order), no lists of small ints (it writes STRING)."""
    if v is True or v is False or v is None or isinstance(v, Atom):
        return False
    if isinstance(v, list):
        small = all(type(x) is int and 0 <= x <= 255 for x in v) and len(v) <= 65535
        return not (v and small) and all(erlang_bytes_equal_ours(x) for x in v)
    if isinstance(v, tuple):
        return all(erlang_bytes_equal_ours(x) for x in v)
    if isinstance(v, dict):
        return len(v) <= 1 and all(
            erlang_bytes_equal_ours(k) and erlang_bytes_equal_ours(x) for k, x in v.items()
        )
    return True


@pytest.mark.skipif(shutil.which("elixir") is None, reason="needs elixir on PATH")
def test_cross_check_with_the_beam(tmp_path: Path) -> None:
    rng = random.Random(20261121)
    ours = [random_term(rng) for _ in range(400)]
    ours += [[], (), {}, b"", "", Atom(""), Atom("é" * 255), 2 ** (8 * MAX_BIG_BYTES) - 1,
             [[[]]], {b"k": {Atom("nested"): (1, 2.5)}}, list(range(300)), (1,) * 256]  # fmt: skip
    (tmp_path / "ours.hex").write_text("\n".join(encode(v).hex() for v in ours) + "\n")
    script = tmp_path / "cross.exs"
    script.write_text(ELIXIR)
    out = subprocess.run(
        ["elixir", str(script), str(tmp_path / "ours.hex")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    p_lines = [line.split(" ") for line in out if line.startswith("P ")]
    e_lines = [line.split(" ") for line in out if line.startswith("E ")]
    r_lines = [line.split(" ") for line in out if line.startswith("R ")]
    assert len(p_lines) == len(ours) and len(e_lines) >= 100 and len(r_lines) == 12

    same_bytes = 0
    for value, (_, erlang_hex, description) in zip(ours, p_lines, strict=True):
        assert erlang_hex != "ERR", f"the BEAM refused our encoding of {value!r:.200}"
        # the BEAM read what we meant ...
        assert canon(parse_description(description)) == canon(value)
        # ... and we read what it writes back
        assert canon(decode(bytes.fromhex(erlang_hex))) == canon(value)
        if erlang_bytes_equal_ours(value):
            assert bytes.fromhex(erlang_hex) == encode(value), f"{value!r:.200}"
            same_bytes += 1
    assert same_bytes > 100

    for _, erlang_hex, description in e_lines:
        expected = parse_description(description)
        decoded = decode(bytes.fromhex(erlang_hex))
        assert canon(decoded) == canon(expected)
        assert canon(decode(encode(decoded))) == canon(expected)

    for _, erlang_hex in r_lines:
        with pytest.raises(EtfError):
            decode(bytes.fromhex(erlang_hex))


@pytest.mark.parametrize("name", ["beambridge.etf", "beambridge.encoder", "beambridge.decoder"])
def test_doctests(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_a_list_of_small_ints_costs_one_byte_each() -> None:
    """Like Erlang's term_to_binary: 0..255 ints in a list of at most 65535 go out as
    STRING_EXT, one byte each; the BEAM reads the same list back. Bools (ints in
    Python) and anything else keep the general list encoding."""
    from beambridge.etf import decode, encode

    small = list(range(256)) * 100
    wire = encode(small)
    assert wire[:4] == b"\x83k" + len(small).to_bytes(2, "big")
    assert len(wire) == 4 + len(small)
    assert decode(wire) == small
    for general in ([True, False], [1, 256], [-1], [1.0], list(range(256)) * 256):
        wire = encode(general)
        assert wire[1] == 108  # LIST_EXT
        assert decode(wire) == general
