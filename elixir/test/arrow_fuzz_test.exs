defmodule Bridge.ArrowFuzzTest do
  # Seeded fuzzing of Bridge.Arrow.decode/2: valid streams of every supported
  # type, mutated (bytes flipped, words overwritten with edge values, cut,
  # spliced, bytes inserted and deleted) many thousand times. Every result must
  # be {:ok, %Bridge.Table{}} or {:error, %Bridge.Error{}}, quickly; an accepted
  # table must convert to terms and re-encode to the same values. Set
  # BB_FUZZ_SEED to replay a run.
  use ExUnit.Case, async: true

  import Bitwise
  alias Bridge.{Arrow, Error, Table}
  alias Bridge.Arrow.{Array, Field}

  @moduletag timeout: 300_000
  @runs 30_000

  setup_all do
    %{seed: Bridge.Test.Seed.run_seed(__MODULE__)}
  end

  setup %{seed: seed} = context do
    Bridge.Test.Seed.seed_test(seed, context.test, 7)
    :ok
  end

  # pyarrow: an int64 and a string column, lz4_frame body compression with
  # real LZ4 sequences (see arrow_codec_test.exs).
  @lz4_sequences "/////6gAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAIAAABAAAAABAAAANj///8AAAEFEAAAABgAAAAEAAAAAAAAAAEAAABzAAAABAAEAAQAAAAQABQACAAGAAcADAAAABAAEAAAAAAAAQIQAAAAHAAAAAQAAAAAAAAAAQAAAHgAAAAIAAwACAAHAAgAAAAAAAABQAAAAAAAAAD/////2AAAABQAAAAAAAAADAAYAAYABQAIAAwADAAAAAADBAAcAAAAeAEAAAAAAAAAAAAADAAcABAABAAIAAwADAAAAHgAAAAcAAAAFAAAAEAAAAAAAAAAAAAAAAQABAAEAAAABQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAADoAAAAAAAAAQAAAAAAAAAAfAAAAAAAAAGAAAAAAAAAA4QAAAAAAAABIAQAAAAAAACoAAAAAAAAAAAAAAAIAAABAAAAAAAAAAAAAAAAAAAAAQAAAAAAAAAAQAAAAAAAAAAACAAAAAAAABCJNGGBAgiMAAAAfAAEAbBMBgAAPCABlEwKAAA8IAGUTA4AADwgAYFAAAAAAAAAAAAAAAAAAAAAIAAAAAAAAAAQiTRhgQIIIAACAu7u7u7u7u7sAAAAAAAQBAAAAAAAABCJNGGBAgsoAAACTAAAAAAMAAAAGBACTCQAAAAwAAAAPBACTEgAAABUAAAAYBACTGwAAAB4AAAAhBACTJAAAACcAAAAqBACTLQAAADAAAAAzBACTNgAAADkAAAA8BACTPwAAAEIAAABFBACTSAAAAEsAAABOBACTUQAAAFQAAABXBACTWgAAAF0AAABgBACTYwAAAGYAAABpBACTbAAAAG8AAAByBACTdQAAAHgAAAB7BACTfgAAAIEAAACEBADwBYcAAACKAAAAjQAAAI0AAACQAAAAAAAAAAAAAAAAAACQAAAAAAAAAAQiTRhgQIITAAAAYWFiY2FiZAYADwkAbVBiZGFiYwAAAAAAAAAAAAD/////AAAAAA=="

  defp corpus do
    one =
      Table.from_columns!(
        [
          i8: [1, nil, -3],
          u32: [0, 7, nil],
          f16: [0.5, :nan, nil],
          f64: [1.5, nil, :infinity],
          b: [true, nil, false],
          s: ["ü", nil, ""],
          ls: ["x", "yy", nil],
          bin: [<<255>>, nil, "z"],
          d32: [~D[2024-01-01], nil, ~D[1969-01-01]],
          d64: [~D[2024-01-01], nil, ~D[1969-01-01]],
          ts: [1, nil, -1],
          tz: [~U[2024-01-01 00:00:00Z], nil, ~U[2024-01-01 00:00:00Z]],
          n: [nil, nil, nil],
          l: [[1, nil], nil, []],
          ll: [[["a"], nil], [], nil],
          dict: ["a", "b", "a"]
        ],
        schema: [
          i8: {:s, 8},
          u32: {:u, 32},
          f16: {:f, 16},
          f64: {:f, 64},
          ls: :large_utf8,
          bin: :large_binary,
          d64: :date64,
          ts: {:timestamp, :ns, nil},
          tz: {:timestamp, :ms, "UTC"},
          ll: {:large_list, Field.new("item", {:list, Field.new("item", :utf8)})},
          dict: {:dictionary, {:s, 16}, :utf8, false}
        ]
      )

    parts = for i <- 1..3, do: Table.from_columns!(x: [i, nil], s: ["#{i}", "é"])

    batches = %Table{
      schema: hd(parts).schema,
      columns:
        parts
        |> Enum.map(& &1.columns)
        |> Enum.zip()
        |> Enum.map(&Enum.flat_map(Tuple.to_list(&1), fn c -> c end)),
      num_rows: 6
    }

    lz4 = Base.decode64!(@lz4_sequences)

    [
      lz4
      | Enum.map(
          [
            one,
            batches,
            Bridge.Test.ArrowSamples.table(),
            Table.from_rows!([]),
            Table.from_columns!(a: [])
          ],
          &Arrow.encode/1
        )
    ]
  end

  @edges [
    0,
    1,
    7,
    8,
    63,
    64,
    0x7F,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFFFFFF,
    0xFFFFFFFF,
    1 <<< 32,
    (1 <<< 63) - 1,
    1 <<< 63,
    (1 <<< 64) - 1
  ]

  defp mutate(bin, others) do
    size = byte_size(bin)

    case :rand.uniform(7) do
      1 ->
        Enum.reduce(1..:rand.uniform(8), bin, fn _, b ->
          put(b, :rand.uniform(size) - 1, <<:rand.uniform(256) - 1>>)
        end)

      2 ->
        w = Enum.random([2, 4, 8])
        v = Enum.random(@edges) |> band((1 <<< (w * 8)) - 1)
        v = if :rand.uniform(2) == 1, do: v, else: :rand.uniform(1 <<< (w * 8)) - 1
        put(bin, :rand.uniform(max(size - w, 1)) - 1, <<v::little-size(w * 8)>>)

      3 ->
        binary_part(bin, 0, :rand.uniform(size + 1) - 1)

      4 ->
        at = :rand.uniform(size + 1) - 1

        binary_part(bin, 0, at) <>
          :crypto.strong_rand_bytes(:rand.uniform(16)) <> binary_part(bin, at, size - at)

      5 ->
        at = :rand.uniform(size) - 1
        n = min(:rand.uniform(16), size - at)
        binary_part(bin, 0, at) <> binary_part(bin, at + n, size - at - n)

      6 ->
        other = Enum.random(others)
        a = :rand.uniform(size + 1) - 1
        b = :rand.uniform(byte_size(other) + 1) - 1
        binary_part(bin, 0, a) <> binary_part(other, b, byte_size(other) - b)

      7 when size < 4 ->
        bin

      7 ->
        # Small deltas on a 32-bit word: near-miss lengths and offsets.
        at = :rand.uniform(max(size - 4, 1)) - 1
        <<_::binary-size(at), v::little-signed-32, _::binary>> = bin
        put(bin, at, <<v + Enum.random([-9, -8, -1, 1, 8, 64])::little-signed-32>>)
    end
  end

  defp put(bin, at, bytes) do
    n = min(byte_size(bytes), byte_size(bin) - at)

    if n <= 0,
      do: bin,
      else:
        binary_part(bin, 0, at) <>
          binary_part(bytes, 0, n) <> binary_part(bin, at + n, byte_size(bin) - at - n)
  end

  # Values an accepted table would materialise: skip absurd ones (a null column
  # of 2^32 rows is valid and tiny on the wire).
  defp cells(%Table{columns: columns}),
    do: columns |> List.flatten() |> Enum.map(&cells/1) |> Enum.sum()

  defp cells(%Array{length: n, children: c, dictionary: d}),
    do: n + Enum.sum(Enum.map(c, &cells/1)) + if(d, do: cells(d), else: 0)

  # A mutated name can make two struct fields alike: such a struct has no map
  # value (a typed error), as documented.
  defp rows_or_duplicates(t) do
    Table.to_rows(t, temporal: :integer)
  rescue
    e in Error ->
      assert e.reason == :duplicate_field
      :duplicate_field
  end

  defp check(input) do
    case Arrow.decode(input) do
      {:ok, %Table{} = t} ->
        if cells(t) <= 100_000 do
          rows = rows_or_duplicates(t)
          assert {:ok, back} = Arrow.decode(Arrow.encode(t))

          assert rows_or_duplicates(back) == rows

          assert rows == :duplicate_field or length(rows) == t.num_rows

          # Native terms either come out or raise the documented typed error.
          try do
            Table.to_rows(t)
          rescue
            e in Error ->
              assert e.reason in [:inexact_temporal, :temporal_out_of_range, :duplicate_field]
          end
        end

        :ok

      {:error, %Error{kind: kind}} when kind in [:arrow, :bad_call] ->
        :error
    end
  end

  test "mutated streams decode or fail with a typed error" do
    streams = corpus()
    started = System.monotonic_time(:millisecond)

    counts =
      Enum.reduce(1..@runs, %{ok: 0, error: 0}, fn _, acc ->
        base = Enum.random(streams)

        input =
          Enum.reduce(1..:rand.uniform(3), base, fn _, b ->
            if b == "", do: b, else: mutate(b, streams)
          end)

        result =
          try do
            check(input)
          rescue
            e ->
              flunk(
                "decode crashed on #{inspect(input, limit: :infinity)}: #{Exception.format(:error, e, __STACKTRACE__)}"
              )
          end

        Map.update!(acc, result, &(&1 + 1))
      end)

    elapsed = System.monotonic_time(:millisecond) - started
    IO.puts("Bridge.ArrowFuzzTest: #{@runs} mutated streams, #{inspect(counts)}, #{elapsed} ms")
    assert counts.error > 0
  end

  test "random bytes, with and without a continuation marker, fail with a typed error" do
    for _ <- 1..2_000 do
      bytes = :crypto.strong_rand_bytes(:rand.uniform(200))

      prefix =
        if :rand.uniform(2) == 1,
          do: <<0xFFFFFFFF::32, :rand.uniform(256)::little-32>>,
          else: <<>>

      assert {:error, %Error{}} = Arrow.decode(prefix <> bytes)
    end
  end
end
