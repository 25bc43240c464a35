defmodule Bridge.ArrowCodecTest do
  # Bridge.Arrow: every type through encode and decode, nulls, empty tables,
  # many batches, unicode, zero-copy decoding, 64-byte alignment, streams
  # pyarrow wrote (golden bytes below), and typed errors for malformed streams.
  use ExUnit.Case, async: true

  import Bitwise
  alias Bridge.{Arrow, Error, Table}
  alias Bridge.Arrow.{Array, Field, Schema}

  defp round_trip(table) do
    stream = Arrow.encode(table)
    assert {:ok, back} = Arrow.decode(stream)
    assert back.schema == table.schema
    assert back.num_rows == table.num_rows
    back
  end

  defp same_values(columns, schema) do
    table = Table.from_columns!(columns, schema: schema)
    back = round_trip(table)
    expected = Map.new(columns, fn {k, v} -> {to_string(k), v} end)
    assert Table.to_columns(back) == expected
    back
  end

  # Temporal values come back with the precision of the column's unit.
  defp same_instants(columns, schema) do
    back = round_trip(Table.from_columns!(columns, schema: schema))

    for {name, values} <- columns, {got, want} <- Enum.zip(Table.column!(back, name), values) do
      assert (got == nil and want == nil) or
               (got.__struct__ == want.__struct__ and got.__struct__.compare(got, want) == :eq)
    end
  end

  describe "types" do
    test "signed and unsigned integers at their limits" do
      for w <- [8, 16, 32, 64] do
        s = [-(1 <<< (w - 1)), -1, 0, nil, (1 <<< (w - 1)) - 1]
        u = [0, 1, nil, (1 <<< w) - 1, 7]
        same_values([s: s, u: u], s: {:s, w}, u: {:u, w})
      end
    end

    test "floats of 16, 32 and 64 bits, with specials" do
      values = [1.5, -0.0, nil, :nan, :infinity, :neg_infinity, 0.25]

      for w <- [16, 32, 64] do
        same_values([f: values], f: {:f, w})
      end

      same_values([f: [1.0e300, 5.0e-324, -2.5]], f: {:f, 64})
    end

    test "float widths round to the declared precision and refuse overflow" do
      t = Table.from_columns!([f: [0.1]], schema: [f: {:f, 32}])
      <<rounded::float-32>> = <<0.1::float-32>>
      assert Table.column!(round_trip(t), "f") == [rounded]

      assert {:error, %Error{reason: :float_overflow}} =
               Table.from_columns([f: [1.0e300]], schema: [f: {:f, 32}])

      assert {:error, %Error{reason: :float_overflow}} =
               Table.from_columns([f: [1.0e6]], schema: [f: {:f, 16}])
    end

    test "booleans across byte boundaries" do
      values = for i <- 0..20, do: if(rem(i, 7) == 0, do: nil, else: rem(i, 3) == 0)
      same_values([b: values], [])
    end

    test "strings and binaries, small and large offsets, unicode" do
      strings = ["", "a", nil, "ünïcödé", "🎉 emoji", "日本語", String.duplicate("x", 1000)]
      bins = [<<0, 255, 254>>, nil, "", "plain"]

      for t <- [:utf8, :large_utf8], b <- [:binary, :large_binary] do
        same_values([s: strings, b: bins ++ [nil, nil, <<1>>]], s: t, b: b)
      end
    end

    test "dates and timestamps in every unit, with and without a zone" do
      dates = [~D[1970-01-01], ~D[2024-02-29], nil, ~D[1900-12-31], ~D[-0044-03-15]]
      same_values([d: dates], d: :date32)
      same_values([d: dates], d: :date64)

      naive = [~N[2024-01-01 00:00:00], nil, ~N[1969-12-31 23:59:59]]
      aware = [~U[2024-01-01 00:00:00Z], nil, ~U[1969-12-31 23:59:59Z]]

      for unit <- [:s, :ms, :us, :ns] do
        same_instants([n: naive], n: {:timestamp, unit, nil})
        same_instants([z: aware], z: {:timestamp, unit, "UTC"})
      end

      t =
        Table.from_columns!([z: [~U[2024-01-01 00:00:00Z]]],
          schema: [z: {:timestamp, :ms, "Asia/Tokyo"}]
        )

      assert hd(round_trip(t).schema.fields).type == {:timestamp, :ms, "Asia/Tokyo"}
    end

    test "null columns" do
      back = same_values([n: [nil, nil, nil]], [])
      assert [%Array{type: :null, null_count: 3}] = Table.chunks(back, "n")
    end

    test "lists and large lists, nested, with null items and empty lists" do
      lists = [[1, 2], [], nil, [nil, 3]]
      same_values([l: lists], [])

      item = Field.new("item", {:list, Field.new("item", :utf8)})
      nested = [[["a", nil], []], nil, [], [nil, ["ü"]]]
      same_values([l: nested], l: {:large_list, item})
      same_values([l: [[], []]], [])
    end

    test "dictionary-encoded strings" do
      values = ["red", "green", nil, "red", "blue"]
      back = same_values([c: values], c: {:dictionary, {:s, 32}, :utf8, false})
      [a] = Table.chunks(back, "c")
      assert a.dictionary.length == 3
    end

    test "schema and field metadata survive" do
      schema =
        Schema.new([Field.new("x", {:s, 8}, nullable: false, metadata: [{"k", "v"}])],
          metadata: [{"owner", "ünï"}]
        )

      t = Table.from_columns!([x: [1, 2]], schema: schema)
      assert round_trip(t).schema == schema
    end
  end

  describe "tables" do
    test "empty tables: no rows, no columns" do
      t = Table.from_columns!([a: [], b: []], schema: [a: {:s, 32}, b: :utf8])
      assert Table.to_rows(round_trip(t)) == []

      t = Table.from_rows!([])
      back = round_trip(t)
      assert Table.to_rows(back) == [] and back.schema.fields == []
    end

    test "many batches keep their chunks and their order" do
      parts = for i <- 0..9, do: Table.from_columns!(x: [i, nil, i * 10], s: ["#{i}", "é", nil])

      columns =
        parts
        |> Enum.map(& &1.columns)
        |> Enum.zip()
        |> Enum.map(fn c -> Enum.flat_map(Tuple.to_list(c), & &1) end)

      table = %Table{schema: hd(parts).schema, columns: columns, num_rows: 30}
      back = round_trip(table)
      assert length(Table.chunks(back, "x")) == 10
      assert Table.column!(back, "x") == Enum.flat_map(0..9, &[&1, nil, &1 * 10])
    end

    test "a hand-built table whose columns disagree is refused" do
      t = Table.from_columns!(x: [1, 2])
      assert_raise Error, ~r/bad_table/, fn -> Arrow.encode(%{t | num_rows: 3}) end
    end
  end

  describe "layout" do
    test "fixed-width columns are zero-copy sub-binaries of the input" do
      t =
        Table.from_columns!(
          a: Enum.to_list(1..100),
          f: Enum.map(1..100, &(&1 / 2)),
          s: ["x", "y"] |> Stream.cycle() |> Enum.take(100)
        )

      stream = Arrow.encode(t)
      {:ok, back} = Arrow.decode(stream)

      for name <- ["a", "f", "s"] do
        [a] = Table.chunks(back, name)
        assert :binary.referenced_byte_size(a.data) == byte_size(stream)
      end
    end

    test "messages and buffers are 64-byte aligned, padding is zero, the end is marked" do
      t = Table.from_columns!(a: [1, nil, 3], s: ["a", "bb", nil], l: [[1], [], nil])
      stream = Arrow.encode(t)
      assert binary_part(stream, byte_size(stream) - 8, 8) == <<-1::32, 0::32>>
      walk(stream, 0)
    end

    defp walk(stream, pos) do
      <<_::binary-size(pos), 0xFFFFFFFF::32, len::little-32, rest::binary>> = stream

      if len > 0 do
        assert rem(pos, 64) == 0 and rem(pos + 8 + len, 64) == 0
        {message, body_len} = Bridge.Arrow.Metadata.read_message(binary_part(rest, 0, len), [])

        case message do
          {:record_batch, %{buffers: buffers}} ->
            for <<off::little-64, _len::little-64 <- buffers>>, do: assert(rem(off, 64) == 0)

          _ ->
            :ok
        end

        walk(stream, pos + 8 + len + body_len)
      end
    end
  end

  # Streams written by pyarrow 26 (see the comment on each).
  # pa.dictionary stream with emit_dictionary_deltas: batch 1 ["a", "b"],
  # batch 2 indices [2, None, 0] over the delta dictionary ["a", "b", "c"].
  @delta "/////5AAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAEAAAAvP///wQAAAABAAAAFAAAABAAGAAIAAYABwAMABAAFAAQAAAAAAABBRQAAABAAAAAHAAAAAQAAAAAAAAAAQAAAGQAAAAIAAgAAAAEAAgAAAAMAAAACAAMAAgABwAIAAAAAAAAASAAAAAEAAQABAAAAAAAAAD/////qAAAABQAAAAAAAAADAAUAAYABQAIAAwADAAAAAACBAAUAAAAGAAAAAAAAAAIAAoAAAAEAAgAAAAQAAAAAAAKABgADAAEAAgACgAAAEwAAAAQAAAAAgAAAAAAAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAwAAAAAAAAAEAAAAAAAAAACAAAAAAAAAAAAAAABAAAAAgAAAAAAAAAAAAAAAAAAAAAAAAABAAAAAgAAAAAAAABhYgAAAAAAAP////+IAAAAFAAAAAAAAAAMABYABgAFAAgADAAMAAAAAAMEABgAAAAIAAAAAAAAAAAACgAYAAwABAAIAAoAAAA8AAAAEAAAAAIAAAAAAAAAAAAAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIAAAAAAAAAAAAAAABAAAAAgAAAAAAAAAAAAAAAAAAAAAAAAABAAAA/////7AAAAAUAAAAAAAAAAwAFgAGAAUACAAMAAwAAAAAAgQAGAAAABAAAAAAAAAAAAAKAA4AAAAIAAcACgAAAAAAAAEQAAAAAAAKABgADAAEAAgACgAAAEwAAAAQAAAAAQAAAAAAAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAAAAAACAAAAAAAAAABAAAAAAAAAAAAAAABAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAABAAAAYwAAAAAAAAD/////iAAAABQAAAAAAAAADAAWAAYABQAIAAwADAAAAAADBAAYAAAAGAAAAAAAAAAAAAoAGAAMAAQACAAKAAAAPAAAABAAAAADAAAAAAAAAAAAAAACAAAAAAAAAAAAAAABAAAAAAAAAAgAAAAAAAAADAAAAAAAAAAAAAAAAQAAAAMAAAAAAAAAAQAAAAAAAAAFAAAAAAAAAAIAAAAAAAAAAAAAAAAAAAD/////AAAAAA=="
  # pa.table({"x": int16 [1, 2, 3], "s": ["p", None, "r"]}) with compression="lz4".
  @lz4 "/////6gAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAIAAABAAAAABAAAANj///8AAAEFEAAAABgAAAAEAAAAAAAAAAEAAABzAAAABAAEAAQAAAAQABQACAAGAAcADAAAABAAEAAAAAAAAQIQAAAAHAAAAAQAAAAAAAAAAQAAAHgAAAAIAAwACAAHAAgAAAAAAAABEAAAAAAAAAD/////2AAAABQAAAAAAAAADAAYAAYABQAIAAwADAAAAAADBAAcAAAAgAAAAAAAAAAAAAAADAAcABAABAAIAAwADAAAAHgAAAAcAAAAFAAAAAMAAAAAAAAAAAAAAAQABAAEAAAABQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB0AAAAAAAAAIAAAAAAAAAAYAAAAAAAAADgAAAAAAAAAJwAAAAAAAABgAAAAAAAAABkAAAAAAAAAAAAAAAIAAAADAAAAAAAAAAAAAAAAAAAAAwAAAAAAAAABAAAAAAAAAAYAAAAAAAAABCJNGGBAggYAAIABAAIAAwAAAAAAAAAAAQAAAAAAAAAEIk0YYECCAQAAgAUAAAAAEAAAAAAAAAAEIk0YYECCEAAAgAAAAAABAAAAAQAAAAIAAAAAAAAAAAIAAAAAAAAABCJNGGBAggIAAIBwcgAAAAAAAAAAAAAA/////wAAAAA="
  # pa.table({"x": int64 [i // 16 for i in 0..63], "s": ["abc", "abd", None, "abc"] * 16})
  # with compression="lz4": blocks of LZ4 sequences, not stored blocks.
  @lz4_sequences "/////6gAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAIAAABAAAAABAAAANj///8AAAEFEAAAABgAAAAEAAAAAAAAAAEAAABzAAAABAAEAAQAAAAQABQACAAGAAcADAAAABAAEAAAAAAAAQIQAAAAHAAAAAQAAAAAAAAAAQAAAHgAAAAIAAwACAAHAAgAAAAAAAABQAAAAAAAAAD/////2AAAABQAAAAAAAAADAAYAAYABQAIAAwADAAAAAADBAAcAAAAeAEAAAAAAAAAAAAADAAcABAABAAIAAwADAAAAHgAAAAcAAAAFAAAAEAAAAAAAAAAAAAAAAQABAAEAAAABQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAADoAAAAAAAAAQAAAAAAAAAAfAAAAAAAAAGAAAAAAAAAA4QAAAAAAAABIAQAAAAAAACoAAAAAAAAAAAAAAAIAAABAAAAAAAAAAAAAAAAAAAAAQAAAAAAAAAAQAAAAAAAAAAACAAAAAAAABCJNGGBAgiMAAAAfAAEAbBMBgAAPCABlEwKAAA8IAGUTA4AADwgAYFAAAAAAAAAAAAAAAAAAAAAIAAAAAAAAAAQiTRhgQIIIAACAu7u7u7u7u7sAAAAAAAQBAAAAAAAABCJNGGBAgsoAAACTAAAAAAMAAAAGBACTCQAAAAwAAAAPBACTEgAAABUAAAAYBACTGwAAAB4AAAAhBACTJAAAACcAAAAqBACTLQAAADAAAAAzBACTNgAAADkAAAA8BACTPwAAAEIAAABFBACTSAAAAEsAAABOBACTUQAAAFQAAABXBACTWgAAAF0AAABgBACTYwAAAGYAAABpBACTbAAAAG8AAAByBACTdQAAAHgAAAB7BACTfgAAAIEAAACEBADwBYcAAACKAAAAjQAAAI0AAACQAAAAAAAAAAAAAAAAAACQAAAAAAAAAAQiTRhgQIITAAAAYWFiY2FiZAYADwkAbVBiZGFiYwAAAAAAAAAAAAD/////AAAAAA=="
  # The same table as @lz4 with compression="zstd".
  @zstd "/////6gAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAIAAABAAAAABAAAANj///8AAAEFEAAAABgAAAAEAAAAAAAAAAEAAABzAAAABAAEAAQAAAAQABQACAAGAAcADAAAABAAEAAAAAAAAQIQAAAAHAAAAAQAAAAAAAAAAQAAAHgAAAAIAAwACAAHAAgAAAAAAAABEAAAAAAAAAD/////4AAAABQAAAAAAAAADAAYAAYABQAIAAwADAAAAAADBAAcAAAAcAAAAAAAAAAAAAAADAAeABAABAAIAAwADAAAAIAAAAAkAAAAGAAAAAMAAAAAAAAAAAAAAAAABgAIAAcABgAAAAAAAAEFAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAFwAAAAAAAAAYAAAAAAAAABIAAAAAAAAAMAAAAAAAAAAhAAAAAAAAAFgAAAAAAAAAEwAAAAAAAAAAAAAAAgAAAAMAAAAAAAAAAAAAAAAAAAADAAAAAAAAAAEAAAAAAAAABgAAAAAAAAAotS/9IAYxAAABAAIAAwAAAQAAAAAAAAAotS/9IAEJAAAFAAAAAAAAEAAAAAAAAAAotS/9IBCBAAAAAAAAAQAAAAEAAAACAAAAAAAAAAAAAAIAAAAAAAAAKLUv/SACEQAAcHIAAAAAAP////8AAAAA"
  # The same table with use_legacy_format=True (no continuation marker, no end marker).
  @legacy "pAAAABAAAAAAAAoADAAGAAUACAAKAAAAAAEEAAwAAAAIAAgAAAAEAAgAAAAEAAAAAgAAAEAAAAAEAAAA2P///wAAAQUQAAAAGAAAAAQAAAAAAAAAAQAAAHMAAAAEAAQABAAAABAAFAAIAAYABwAMAAAAEAAQAAAAAAABAhAAAAAcAAAABAAAAAAAAAABAAAAeAAAAAgADAAIAAcACAAAAAAAAAEQAAAAzAAAABQAAAAAAAAADAAWAAYABQAIAAwADAAAAAADBAAYAAAAKAAAAAAAAAAAAAoAGAAMAAQACAAKAAAAbAAAABAAAAADAAAAAAAAAAAAAAAFAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABgAAAAAAAAAIAAAAAAAAAAEAAAAAAAAAEAAAAAAAAAAQAAAAAAAAACAAAAAAAAAAAgAAAAAAAAAAAAAAAgAAAAMAAAAAAAAAAAAAAAAAAAADAAAAAAAAAAEAAAAAAAAAAAAAAAEAAgADAAAABQAAAAAAAAAAAAAAAQAAAAEAAAACAAAAcHIAAAAAAAAAAAAA"

  # pyarrow 26, one batch of three rows: a field may be non-nullable and still hold
  # nulls its type keeps as values (a run-end encoded array's null run values, a null
  # among a dictionary's values), and a non-nullable child holds a null under a null
  # parent slot.
  #   r: run_end_encoded<int32, string> not null   ["a", "a", None]
  #   s: struct<k: dictionary<int8, string> not null (dictionary ["x", None]),
  #             n: int64 not null (null under the null slot)>
  #                                                [{"k": "x", "n": 1}, None, {"k": None, "n": 3}]
  #   l: list<item: run_end_encoded<int32, int64> not null> not null   [[1, None], [], []]
  @nulls_as_values "/////1ACAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAEAAAAoP7//wQAAAADAAAAdAEAAMQAAAAEAAAAMP7//wAAAAwUAAAAGAAAAAQAAAABAAAAEAAAAAEAAABsAAAAXP7//1j+//8AAAAWGAAAACAAAAAEAAAAAgAAAEgAAAAUAAAABAAAAGl0ZW0AAAAAjP7//8T+//8AAAECEAAAABgAAAAEAAAAAAAAAAYAAAB2YWx1ZXMAAHT+//8AAAABQAAAALj+//8AAAACEAAAABwAAAAEAAAAAAAAAAgAAABydW5fZW5kcwAAAACo/v//AAAAASAAAAAo////AAABDRgAAAAcAAAABAAAAAIAAABQAAAAEAAAAAEAAABzAAAAHP///xj///8AAAACEAAAABQAAAAEAAAAAAAAAAEAAABuAAAAAP///wAAAAFAAAAAEAAYAAgAAAAHAAwAEAAUABAAAAAAAAAFFAAAADQAAAAcAAAABAAAAAAAAAABAAAAawAAAAgACAAAAAQACAAAAAQAAABQ////AAAAAQgAAACc////mP///wAAABYYAAAAHAAAAAQAAAACAAAAYAAAACAAAAABAAAAcgAAAMj///8QABQACAAGAAcADAAAABAAEAAAAAAAAQUQAAAAHAAAAAQAAAAAAAAABgAAAHZhbHVlcwAABAAEAAQAAAAQABQACAAAAAcADAAAABAAEAAAAAAAAAIQAAAAJAAAAAQAAAAAAAAACAAAAHJ1bl9lbmRzAAAAAAgADAAIAAcACAAAAAAAAAEgAAAA/////6gAAAAUAAAAAAAAAAwAFAAGAAUACAAMAAwAAAAAAgQAFAAAACAAAAAAAAAACAAKAAAABAAIAAAAEAAAAAAACgAYAAwABAAIAAoAAABMAAAAEAAAAAIAAAAAAAAAAAAAAAMAAAAAAAAAAAAAAAEAAAAAAAAACAAAAAAAAAAMAAAAAAAAABgAAAAAAAAAAQAAAAAAAAAAAAAAAQAAAAIAAAAAAAAAAQAAAAAAAAABAAAAAAAAAAAAAAABAAAAAQAAAAAAAAB4AAAAAAAAAP/////4AQAAFAAAAAAAAAAMABYABgAFAAgADAAMAAAAAAMEABgAAACIAAAAAAAAAAAACgAYAAwABAAIAAoAAAAcAQAAEAAAAAMAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIAAAAAAAAAAgAAAAAAAAAAQAAAAAAAAAQAAAAAAAAAAwAAAAAAAAAIAAAAAAAAAABAAAAAAAAACgAAAAAAAAAAQAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAMAAAAAAAAAADAAAAAAAAADgAAAAAAAAAAQAAAAAAAABAAAAAAAAAABgAAAAAAAAAWAAAAAAAAAAAAAAAAAAAAFgAAAAAAAAAEAAAAAAAAABoAAAAAAAAAAAAAAAAAAAAaAAAAAAAAAAIAAAAAAAAAHAAAAAAAAAAAQAAAAAAAAB4AAAAAAAAABAAAAAAAAAAAAAAAAoAAAADAAAAAAAAAAAAAAAAAAAAAgAAAAAAAAAAAAAAAAAAAAIAAAAAAAAAAQAAAAAAAAADAAAAAAAAAAEAAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAMAAAAAAAAAAQAAAAAAAAADAAAAAAAAAAAAAAAAAAAAAgAAAAAAAAAAAAAAAAAAAAIAAAAAAAAAAAAAAAAAAAACAAAAAAAAAAEAAAAAAAAAAgAAAAMAAAABAAAAAAAAAAAAAAABAAAAAQAAAAAAAABhAAAAAAAAAAUAAAAAAAAAAAABAAAAAAAFAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAADAAAAAAAAAAAAAAACAAAAAgAAAAIAAAABAAAAAgAAAAEAAAAAAAAAAQAAAAAAAAAAAAAAAAAAAP////8AAAAA"

  describe "streams written by pyarrow" do
    test "nulls a non-nullable field keeps as values come back through to_columns/from_columns" do
      {:ok, t} = Arrow.decode(Base.decode64!(@nulls_as_values))
      columns = Table.to_columns(t)

      assert columns == %{
               "r" => ["a", "a", nil],
               "s" => [%{"k" => "x", "n" => 1}, nil, %{"k" => nil, "n" => 3}],
               "l" => [[1, nil], [], []]
             }

      ordered = for name <- Table.column_names(t), do: {name, columns[name]}
      again = Table.from_columns!(ordered, schema: Table.schema(t))
      assert again.schema == t.schema
      assert Table.to_columns(round_trip(again)) == columns

      # A nil that would be a null slot of a non-nullable field is still refused: at
      # the top level, in a child of a valid parent, as a run value of non-nullable
      # values.
      n = Field.new("n", {:s, 64}, nullable: false)
      strict = {:run_end_encoded, Field.new("e", {:s, 32}, nullable: false), %{n | name: "v"}}

      for {columns, field} <- [
            {[n: [1, nil]], n},
            {[s: [%{"n" => 1}, %{"n" => nil}]], Field.new("s", {:struct, [n]})},
            {[r: [1, nil]], Field.new("r", strict, nullable: false)}
          ] do
        assert {:error, %Error{kind: :bad_call, reason: :null_in_non_nullable}} =
                 Table.from_columns(columns, schema: [field])
      end
    end

    test "delta dictionary batches append to the dictionary" do
      {:ok, t} = Arrow.decode(Base.decode64!(@delta))
      assert Table.column!(t, "d") == ["a", "b", "c", nil, "a"]
      assert [%Array{dictionary: d1}, %Array{dictionary: d2}] = Table.chunks(t, "d")
      # the delta is a chunk of its own after the first dictionary
      assert {d1.length, d1.deltas, d2.length, Enum.map(d2.deltas, & &1.length)} ==
               {2, [], 2, [1]}

      # Re-encoded (the dictionary, then the delta as a delta batch) it reads back the same.
      assert Table.to_rows(round_trip(t)) == Table.to_rows(t)
    end

    test "the legacy framing without continuation markers" do
      {:ok, t} = Arrow.decode(Base.decode64!(@legacy))
      assert Table.to_columns(t) == %{"x" => [1, 2, 3], "s" => ["p", nil, "r"]}
      assert hd(t.schema.fields).type == {:s, 16}
    end

    test "lz4_frame bodies are decompressed" do
      {:ok, t} = Arrow.decode(Base.decode64!(@lz4))
      assert Table.to_columns(t) == %{"x" => [1, 2, 3], "s" => ["p", nil, "r"]}

      {:ok, t} = Arrow.decode(Base.decode64!(@lz4_sequences))
      assert Table.column!(t, "x") == Enum.map(0..63, &div(&1, 16))
      assert Table.column!(t, "s") == List.flatten(List.duplicate(["abc", "abd", nil, "abc"], 16))
      assert Table.to_rows(round_trip(t)) == Table.to_rows(t)
    end

    test "a declared decompressed size above the limit is refused before decompressing" do
      assert {:error, %Error{reason: :decompressed_too_large}} =
               Arrow.decode(Base.decode64!(@lz4_sequences), max_decompressed: 100)
    end

    test "zstd bodies are decompressed and equal the lz4 and uncompressed decodes" do
      {:ok, t} = Arrow.decode(Base.decode64!(@zstd))
      {:ok, lz4} = Arrow.decode(Base.decode64!(@lz4))
      {:ok, legacy} = Arrow.decode(Base.decode64!(@legacy))
      assert Table.to_columns(t) == %{"x" => [1, 2, 3], "s" => ["p", nil, "r"]}
      assert Table.to_columns(t) == Table.to_columns(lz4)
      assert Table.to_columns(t) == Table.to_columns(legacy)
      assert t.schema == legacy.schema
      assert Table.to_rows(round_trip(t)) == Table.to_rows(t)
    end

    test "zstd: the max_decompressed limit applies before the NIF is called" do
      assert {:error, %Error{reason: :decompressed_too_large}} =
               Arrow.decode(Base.decode64!(@zstd), max_decompressed: 4)
    end

    test "corrupt zstd data is a typed error" do
      stream = Base.decode64!(@zstd)
      # Every zstd frame in the body: corrupt each of its bytes in turn.
      for {at, _} <- :binary.matches(stream, <<0x28, 0xB5, 0x2F, 0xFD>>), i <- 0..20 do
        <<pre::binary-size(at + i), byte, post::binary>> = stream

        case Arrow.decode(pre <> <<Bitwise.bxor(byte, 0x5A)>> <> post) do
          {:ok, %Table{}} -> :ok
          {:error, %Error{kind: :arrow}} -> :ok
        end
      end

      # A buffer whose recorded uncompressed length disagrees with its frame.
      {at, _} = :binary.match(stream, <<0x28, 0xB5, 0x2F, 0xFD>>)
      <<pre::binary-size(at - 8), len::little-signed-64, post::binary>> = stream

      assert {:error, %Error{kind: :arrow, reason: :bad_compressed_data, field: :zstd_frame}} =
               Arrow.decode(pre <> <<len + 1::little-signed-64>> <> post)
    end

    test "corrupt lz4 data is a typed error" do
      stream = Base.decode64!(@lz4_sequences)
      # The first compressed block: corrupt its bytes one at a time.
      {at, _} = :binary.match(stream, <<0x04, 0x22, 0x4D, 0x18>>)

      for i <- 4..40 do
        <<pre::binary-size(at + i), byte, post::binary>> = stream

        case Arrow.decode(pre <> <<Bitwise.bxor(byte, 0x5A)>> <> post) do
          {:ok, %Table{}} -> :ok
          {:error, %Error{kind: :arrow}} -> :ok
        end
      end
    end
  end

  describe "malformed streams" do
    setup do
      t = Table.from_columns!(a: [1, nil, 3], s: ["x", "yz", nil], l: [[1, 2], nil, []])
      %{stream: Arrow.encode(t)}
    end

    test "every truncation is a typed error", %{stream: stream} do
      for n <- 0..(byte_size(stream) - 1) do
        assert {:error, %Error{kind: :arrow}} = Arrow.decode(binary_part(stream, 0, n)),
               "truncated to #{n} bytes"
      end
    end

    test "empty input and bad framing", %{stream: stream} do
      assert {:error, %Error{reason: :truncated}} = Arrow.decode(<<>>)

      assert {:ok, _} =
               Arrow.decode(binary_part(stream, 0, byte_size(stream) - 8), require_eos: false)

      assert {:error, %Error{reason: :missing_schema}} = Arrow.decode(<<-1::32, 0::32>>)
      assert {:error, %Error{reason: :bad_length}} = Arrow.decode(<<-1::32, -8::little-32>>)

      assert {:error, %Error{reason: :truncated}} =
               Arrow.decode(<<-1::32, 1000::little-32, 0::64>>)

      assert {:error, %Error{kind: :bad_call}} = Arrow.decode(:not_a_binary)
    end

    test "a flatbuffer offset pointing outside the metadata", %{stream: stream} do
      <<prefix::binary-size(8), _root::little-32, rest::binary>> = stream
      bad = prefix <> <<0x7FFFFFF0::little-32>> <> rest
      assert {:error, %Error{reason: :bad_flatbuffer, field: :message}} = Arrow.decode(bad)
    end

    test "a buffer past the body, a short buffer, bad offsets", %{stream: stream} do
      {schema_len, batch_at, batch_meta} = first_batch(stream)
      assert schema_len > 0
      # The buffer list follows the nodes; patch the second buffer (a's data).
      {buffers_pos, _} = buffer_vector(batch_meta)

      patch = fn index, off, len ->
        at = batch_at + buffers_pos + 16 * index
        <<pre::binary-size(at), _::binary-size(16), post::binary>> = stream
        pre <> <<off::little-64, len::little-64>> <> post
      end

      assert {:error, %Error{reason: :buffer_out_of_bounds}} =
               Arrow.decode(patch.(1, 1 <<< 40, 24))

      assert {:error, %Error{reason: :buffer_out_of_bounds}} = Arrow.decode(patch.(1, -64, 24))
      assert {:error, %Error{reason: :buffer_out_of_bounds}} = Arrow.decode(patch.(1, 64, -1))
      assert {:error, %Error{reason: :buffer_too_short}} = Arrow.decode(patch.(1, 64, 16))
      assert {:error, %Error{reason: :buffer_too_short}} = Arrow.decode(patch.(0, 0, 0))
    end

    test "non-monotonic string offsets and offsets past the data" do
      t = Table.from_columns!(s: ["ab", "c"])
      stream = Arrow.encode(t)
      offsets = <<0::little-32, 2::little-32, 3::little-32>>
      {at, _} = :binary.match(stream, offsets)

      swap = fn new ->
        <<pre::binary-size(at), _::binary-size(12), post::binary>> = stream
        pre <> new <> post
      end

      assert {:error, %Error{reason: :bad_offsets}} =
               Arrow.decode(swap.(<<0::32, 3::little-32, 2::little-32>>))

      assert {:error, %Error{reason: :bad_offsets}} =
               Arrow.decode(swap.(<<0::32, 2::little-32, 99::little-32>>))

      assert {:error, %Error{reason: :bad_offsets}} =
               Arrow.decode(swap.(<<-1::little-32, 2::little-32, 3::little-32>>))
    end

    test "strings that are not UTF-8, and strings split inside a character" do
      stream = Arrow.encode(Table.from_columns!(s: ["é", "ab"]))
      {at, _} = :binary.match(stream, "éab")
      <<pre::binary-size(at), _::binary-size(4), post::binary>> = stream

      assert {:error, %Error{reason: :bad_utf8}} =
               Arrow.decode(pre <> <<0xFF, 0xFE, ?a, ?b>> <> post)

      assert {:ok, _} = Arrow.decode(pre <> <<0xFF, 0xFE, ?a, ?b>> <> post, validate_utf8: false)

      {at, _} = :binary.match(stream, <<0::little-32, 2::little-32, 4::little-32>>)
      <<pre::binary-size(at), _::binary-size(12), post::binary>> = stream
      split = pre <> <<0::little-32, 1::little-32, 4::little-32>> <> post
      assert {:error, %Error{reason: :bad_utf8}} = Arrow.decode(split)
    end

    test "a node whose length differs from the batch, and too many rows" do
      stream = Arrow.encode(Table.from_columns!(a: [1, 2, 3]))
      {at, _} = :binary.match(stream, <<3::little-64, 0::little-64>>)
      <<pre::binary-size(at), _::binary-size(16), post::binary>> = stream

      assert {:error, %Error{reason: :bad_length}} =
               Arrow.decode(pre <> <<2::little-64, 0::little-64>> <> post)

      assert {:error, %Error{reason: :bad_null_count}} =
               Arrow.decode(pre <> <<3::little-64, 4::little-64>> <> post)

      assert {:error, %Error{reason: :too_many_rows}} = Arrow.decode(stream, max_rows: 2)
    end
  end

  # {schema message length, stream offset of the first batch's metadata, that metadata}
  defp first_batch(stream) do
    <<0xFFFFFFFF::32, len::little-32, _::binary-size(len), 0xFFFFFFFF::32, blen::little-32,
      _::binary>> = stream

    at = 8 + len + 8
    {len, at, binary_part(stream, at, blen)}
  end

  # Where the RecordBatch buffers vector's elements start in the batch metadata.
  defp buffer_vector(meta) do
    alias Bridge.Arrow.FlatBuffer.Reader
    msg = Reader.root(meta, :message)
    header = Reader.table(msg, 2, :header)
    bytes = Reader.vector_bytes(header, 2, 16, :buffers)
    {pos, _} = :binary.match(meta, bytes)
    {pos, byte_size(bytes)}
  end
end
