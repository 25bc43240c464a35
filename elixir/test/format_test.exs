defmodule Bridge.FormatTest do
  # Format selection without Python (protocol/SPEC.md §10.1): eligibility of number
  # lists, record lists and column maps, the packed dtypes, the records stream and
  # its rebuilding, the forms Bridge.Encoder writes and Bridge.Decoder reads
  # (inline and slice frames), the errors, the counters and the debug log.
  # Seeded property-style checks: BB_FUZZ_SEED replays a run.
  use ExUnit.Case, async: false

  import Bitwise
  import ExUnit.CaptureLog

  require Logger

  alias Bridge.{Arrow, Error, Format, Table}
  alias Bridge.Test.Wire
  alias Bridge.Arrow.{Array, Field, Schema}

  doctest Bridge.Format

  @moduletag :capture_log

  @i64_min Bitwise.bsl(-1, 63)
  @i64_max (1 <<< 63) - 1
  @u64_max (1 <<< 64) - 1
  @big 1 <<< 40

  setup_all do
    %{seed: Bridge.Test.Seed.run_seed(__MODULE__)}
  end

  setup %{seed: seed} = context do
    Bridge.Test.Seed.seed_test(seed, context.test, 11)
    :ok
  end

  ## Helpers

  # Encodes `args` as a caller would; returns the terms and what each slice
  # holds ({header, metadata, payload copy}), by handle index.
  defp encode(args, opts \\ [], threshold \\ @big), do: Wire.encode(args, opts, threshold)

  defp decode(term), do: Wire.decode(term)

  defp stat(direction, form, reason) do
    Enum.find_value(Bridge.format_stats(), {0, 0}, fn
      %{direction: ^direction, form: ^form, reason: ^reason, count: c, bytes: b} -> {c, b}
      _ -> nil
    end)
  end

  defp records_stream(columns, keys_meta, types) do
    fields = for {name, _} <- columns, do: Field.new(name, Map.fetch!(types, name))
    metadata = if keys_meta, do: [{"beambridge.keys", keys_meta}], else: []
    table = Table.from_columns!(columns, schema: Schema.new(fields, metadata: metadata))
    Arrow.encode(table)
  end

  ## Policy

  test "format: accepts :auto, :etf, :packed, :arrow and nothing else" do
    for p <- [:auto, :etf, :packed, :arrow], do: assert({:ok, ^p} = Format.check_policy(p))

    for bad <- [nil, "auto", :json, 1] do
      assert {:error, %Error{kind: :bad_call, reason: :bad_option, field: :format, value: ^bad}} =
               Format.check_policy(bad)
    end
  end

  ## Number lists

  test "the narrowest dtype, signed first at equal size" do
    cases = [
      {-128, 127, "|i1"},
      {0, 127, "|i1"},
      {0, 128, "|u1"},
      {0, 255, "|u1"},
      {-1, 128, "<i2"},
      {0, 256, "<i2"},
      {-32_768, 32_767, "<i2"},
      {0, 32_768, "<u2"},
      {0, 65_535, "<u2"},
      {-1, 32_768, "<i4"},
      {0, 65_536, "<i4"},
      {-(1 <<< 31), (1 <<< 31) - 1, "<i4"},
      {0, 1 <<< 31, "<u4"},
      {0, (1 <<< 32) - 1, "<u4"},
      {-1, 1 <<< 31, "<i8"},
      {@i64_min, @i64_max, "<i8"},
      {0, @i64_max + 1, "<u8"},
      {0, @u64_max, "<u8"},
      {-1, @i64_max + 1, nil},
      {0, @u64_max + 1, nil}
    ]

    for {lo, hi, dtype} <- cases do
      assert Format.int_dtype(lo, hi) == dtype, "#{lo}..#{hi}"
    end
  end

  test ":auto packs number lists of at least 128 elements" do
    assert Format.packed_min() == 128

    assert {:etf, :below_min, :number_list, 127} =
             Format.select_list(Enum.to_list(1000..1126), :auto)

    assert {:packed, :auto, "<i2", data, 128} =
             Format.select_list(Enum.to_list(1000..1127), :auto)

    assert data == for(x <- 1000..1127, into: <<>>, do: <<x::little-16>>)

    floats = Enum.map(1..300, &(&1 / 7))
    assert {:packed, :auto, "<f8", fdata, 300} = Format.select_list(floats, :auto)
    assert Format.unpack("<f8", fdata) == {:ok, floats}

    assert {:etf, :below_min, :number_list, 2} = Format.select_list([1.5, 2.5], :auto)
  end

  test "lists of integers in 0..255 go packed from packed_min, like any number list" do
    # ETF's STRING_EXT is one byte each too, but measured slower end to end
    # (bench/formats.exs, "bytes")
    bytes = for i <- 1..65_535, do: rem(i, 256)
    assert {:packed, :auto, "|u1", _, 65_535} = Format.select_list(bytes, :auto)

    assert {:etf, :below_min, :number_list, 127} =
             Format.select_list(Enum.take(bytes, 127), :auto)

    assert {:packed, :auto, "|u1", _, 65_536} = Format.select_list([0 | bytes], :auto)
    # one negative element: not a byte list any more
    assert {:packed, :auto, "|i1", _, 300} =
             Format.select_list([-1 | List.duplicate(1, 299)], :auto)

    assert {:packed, :forced, "|u1", <<1, 200>>, 2} = Format.select_list([1, 200], :packed)
  end

  test "what is not a number list" do
    for list <- [
          [],
          [1],
          [1.5],
          [1, 2.0],
          [1.0, 2],
          [1, :a],
          [1, "2"],
          [true, false],
          [nil, 1],
          [[1, 2], [3, 4]],
          [1, 2 | 3]
        ] do
      assert Format.select_list(list, :auto) == :none, inspect(list)
    end

    # integers out of both int64 and uint64, or spanning both
    for list <- [[0, @u64_max + 1], [@i64_min - 1, 0], [-1, @i64_max + 1]] do
      long = list ++ List.duplicate(0, 300)
      assert Format.select_list(long, :auto) == :none
    end

    assert {:packed, :auto, "<u8", _, _} =
             Format.select_list([@u64_max | List.duplicate(0, 300)], :auto)
  end

  test ":packed packs any number list; lists of numbers it cannot pack go as ETF" do
    assert {:packed, :forced, "|i1", <<1, 2>>, 2} = Format.select_list([1, 2], :packed)
    assert {:packed, :forced, "<f8", _, 2} = Format.select_list([1.0, 2.0], :packed)

    for list <- [[1, 2, 3.5], [1, @u64_max + 1], [-1, @i64_max + 1], [1, "a"], [1], ["a", "b"]] do
      assert Format.select_list(list, :packed) == :none, inspect(list)
    end
  end

  test ":etf never packs; :arrow packs as :auto does" do
    long = Enum.to_list(1..1000)
    assert {:etf, :policy, :number_list, 1000} = Format.select_list(long, :etf)
    assert {:packed, :auto, "<i2", _, 1000} = Format.select_list(long, :arrow)
  end

  test "unpack refuses what is not a packed list" do
    assert {:error, _} = Format.unpack("<f4", <<0::32>>)
    assert {:error, _} = Format.unpack("<i2", <<0, 0, 0>>)
    assert {:error, _} = Format.unpack("<f8", <<0x7FF8000000000000::little-64>>)
    assert {:error, _} = Format.unpack("|u1", [1])
    assert {:ok, []} = Format.unpack("<i8", "")
  end

  test "property: packed lists unpack to themselves in the narrowest dtype" do
    ranges = [
      {-128, 127},
      {0, 255},
      {-32_768, 32_767},
      {0, 65_535},
      {-(1 <<< 31), (1 <<< 31) - 1},
      {0, (1 <<< 32) - 1},
      {@i64_min, @i64_max},
      {0, @u64_max}
    ]

    for _ <- 1..300 do
      {lo, hi} = Enum.random(ranges)
      n = Enum.random(2..600)
      list = for _ <- 1..n, do: lo + :rand.uniform(hi - lo + 1) - 1
      {min, max} = Enum.min_max(list)

      assert {:packed, :forced, dtype, data, ^n} = Format.select_list(list, :packed)
      assert dtype == Format.int_dtype(min, max)
      assert Format.unpack(dtype, data) == {:ok, list}

      case Format.select_list(list, :auto) do
        {:packed, :auto, ^dtype, ^data, ^n} -> assert n >= Format.packed_min()
        {:etf, :below_min, :number_list, ^n} -> assert n < Format.packed_min()
      end
    end

    for _ <- 1..100 do
      n = Enum.random(2..600)
      list = for _ <- 1..n, do: (:rand.uniform() - 0.5) * :math.pow(10, Enum.random(-300..300))
      assert {:packed, :forced, "<f8", data, ^n} = Format.select_list(list, :packed)
      assert Format.unpack("<f8", data) == {:ok, list}
    end
  end

  ## Record lists and column maps

  defp rows(n) do
    for i <- 1..n do
      %{
        id: i,
        x: if(rem(i, 5) == 0, do: nil, else: i * 0.25),
        ok: rem(i, 2) == 0,
        name: if(rem(i, 7) == 0, do: nil, else: "r#{i}"),
        raw: <<i::16, 255>>,
        none: nil
      }
    end
  end

  test ":auto sends record lists of at least 256 cells as records" do
    assert Format.records_min() == 256
    # 42 rows x 6 columns = 252 cells; 43 x 6 = 258
    assert {:etf, :below_min, :record_list, 252} = Format.select_list(rows(42), :auto)
    assert {:records, :auto, :rows, stream, 43, 6} = Format.select_list(rows(43), :auto)

    assert {:ok, table} = Arrow.decode(stream)
    assert Schema.names(table.schema) == ~w(id name none ok raw x)

    assert Enum.map(table.schema.fields, & &1.type) ==
             [{:s, 64}, :binary, :null, :bool, :binary, {:f, 64}]

    assert table.schema.metadata == [{"beambridge.keys", "atom"}]
    expected = rows(43)
    assert {:ok, ^expected, _} = Format.decode_records(:rows, stream)
  end

  test "maps and lists of maps in a column go as struct and list<struct> columns, keys kept" do
    rows =
      for i <- 1..100 do
        %{
          id: i,
          user: if(rem(i, 7) == 0, do: nil, else: %{"name" => "u#{i}", "score" => i * 0.5}),
          items: if(rem(i, 5) == 0, do: nil, else: [%{sku: "s#{i}", qty: i, tags: []}, nil]),
          empty: [],
          none: %{}
        }
      end

    assert {:records, :auto, :rows, stream, 100, 5} = Format.select_list(rows, :auto)
    assert {:ok, table} = Arrow.decode(stream)
    fields = Map.new(table.schema.fields, &{&1.name, &1})
    assert fields["user"].metadata == [{"beambridge.keys", "binary"}]
    {:list, item} = fields["items"].type
    assert item.metadata == [{"beambridge.keys", "atom"}]
    assert {:ok, ^rows, _} = Format.decode_records(:rows, stream)

    columns = %{"a" => [[%{x: 1}], nil, []], "b" => [%{}, nil, %{}]}
    assert {:records, :forced, :columns, stream, 3, 2} = Format.select_map(columns, :arrow)
    assert {:ok, ^columns, _} = Format.decode_records(:columns, stream)
  end

  test "a records stream with a struct column that does not say how to rebuild its keys is refused" do
    no_keys =
      Table.from_columns!([s: [%{"a" => 1}]], schema: [s: {:struct, [Field.new("a", {:s, 64})]}])

    stream =
      Arrow.encode(%{
        no_keys
        | schema: %{no_keys.schema | metadata: [{"beambridge.keys", "atom"}]}
      })

    assert {:error, %Error{reason: :unsupported_type}} = Format.decode_records(:rows, stream)

    name = "no_such_atom_#{System.unique_integer([:positive])}"
    struct = {:struct, [Field.new(name, {:s, 64})]}
    unknown = Field.new("s", struct, metadata: [{"beambridge.keys", "atom"}])
    t = Table.from_columns!([s: [%{name => 1}]], schema: [unknown])
    t = %{t | schema: %{t.schema | metadata: [{"beambridge.keys", "atom"}]}}
    assert {:error, %Error{reason: :unknown_atom}} = Format.decode_records(:rows, Arrow.encode(t))
  end

  test ":auto sends column maps of at least 256 cells as records" do
    small = %{"a" => Enum.to_list(1..127), "b" => List.duplicate("x", 127)}
    assert {:etf, :below_min, :column_map, 254} = Format.select_map(small, :auto)

    big = %{"a" => Enum.to_list(1..128), "b" => List.duplicate(<<0, 1>>, 128)}
    assert {:records, :auto, :columns, stream, 128, 2} = Format.select_map(big, :auto)
    assert {:ok, table} = Arrow.decode(stream)
    assert table.schema.metadata == [{"beambridge.keys", "binary"}]
    assert {:ok, ^big, _} = Format.decode_records(:columns, stream)
  end

  test "what is not a record list or a column map (and the :arrow error naming why)" do
    cases = [
      {[%{a: 1}, %{b: 1}], :different_keys, "row 1"},
      {[%{a: 1}, %{a: 1, b: 2}], :different_keys, "row 1"},
      {[%{a: 1}, %{a: 1.5}], :mixed_kinds, "integers and floats"},
      {[%{a: "x"}, %{a: true}], :mixed_kinds, "binaries and booleans"},
      {[%{a: 1 <<< 63}], :integer_range, "beyond int64"},
      {[%{a: [1]}], :nested_value, "nested"},
      {[%{a: %{b: 1}}, %{a: %{c: 1}}], :different_keys, "column :a row 1 holds a map"},
      {[%{a: [%{b: 1}]}, %{a: [%{b: "x"}]}], :mixed_kinds, "integers and binaries"},
      {[%{a: [%{b: 1}, 2]}], :nested_value, "not a list of maps"},
      {[%{a: %{1 => 2}}], :bad_keys, "holds a map whose"},
      {[%{a: %{b: {1}}}], :nested_value, "nested"},
      {[%{a: {1}}], :nested_value, "nested"},
      {[%{a: :atom}], :unsupported_value, ":atom"},
      {[%{:a => 1, "b" => 2}], :bad_keys, "atoms"},
      {[%{<<255>> => 1}], :bad_keys, "UTF-8"},
      {[%{nil => 1}], :bad_keys, "nil"},
      {[%{"$bb_x": 1}], :bad_keys, "$bb_"}
    ]

    for {rows, reason, text} <- cases do
      assert Format.select_list(rows, :auto) == :none, inspect(rows)

      assert {:error, %Error{kind: :bad_call, reason: :format_unsuitable, value: ^reason} = e} =
               Format.select_list(rows, :arrow)

      assert e.message =~ text, e.message
      assert e.message =~ "format: :auto"
    end

    columns = [
      {%{a: [1, 2], b: [1]}, :ragged_columns},
      {%{a: [1, 2.0]}, :mixed_kinds},
      {%{a: [[1]]}, :nested_value},
      {%{"a" => [1], b: [2]}, :bad_keys}
    ]

    for {map, reason} <- columns do
      assert Format.select_map(map, :auto) == :none

      assert {:error, %Error{reason: :format_unsuitable, value: ^reason}} =
               Format.select_map(map, :arrow)
    end

    # not lists of maps / maps of lists at all: no error even when forced
    assert Format.select_list([%{a: 1}, 5], :arrow) == :none
    assert Format.select_list([%URI{}], :arrow) == :none
    assert Format.select_map(%{a: 1, b: [1]}, :arrow) == :none
    assert Format.select_map(%{}, :arrow) == :none
    assert Format.select_map(%{a: [1 | 2]}, :arrow) == :none
  end

  test ":arrow sends every record list and column map as records; :etf none" do
    assert {:records, :forced, :rows, stream, 1, 1} = Format.select_list([%{a: 1}], :arrow)
    assert {:ok, [%{a: 1}], _} = Format.decode_records(:rows, stream)
    assert {:records, :forced, :columns, stream, 0, 1} = Format.select_map(%{a: []}, :arrow)
    assert {:ok, %{a: []}, _} = Format.decode_records(:columns, stream)
    assert {:records, :forced, :rows, stream, 2, 0} = Format.select_list([%{}, %{}], :arrow)
    assert {:ok, [%{}, %{}], _} = Format.decode_records(:rows, stream)

    assert {:etf, :policy, :record_list, 30_000} = Format.select_list(rows(5000), :etf)
    # :packed leaves records to the :auto rules
    assert {:records, :auto, :rows, _, 5000, 6} = Format.select_list(rows(5000), :packed)
  end

  test "property: random record lists and column maps rebuild exactly" do
    kinds = [:int, :float, :bool, :binary, :null]

    value = fn
      :int -> Enum.random([@i64_min, @i64_max, 0, :rand.uniform(1000) - 500])
      :float -> :rand.uniform() * 1.0e6 - 5.0e5
      :bool -> :rand.uniform(2) == 1
      :binary -> :crypto.strong_rand_bytes(:rand.uniform(6) - 1)
      :null -> nil
    end

    for _ <- 1..150 do
      ncols = Enum.random(1..6)
      nrows = Enum.random(1..60)
      atom_keys? = :rand.uniform(2) == 1

      keys =
        for i <- 1..ncols,
            do: if(atom_keys?, do: :"k#{i}", else: "ключ#{i}")

      col_kinds = for _ <- keys, do: Enum.random(kinds)

      rows =
        for _ <- 1..nrows do
          for {k, kind} <- Enum.zip(keys, col_kinds), into: %{} do
            {k, if(:rand.uniform(4) == 1, do: nil, else: value.(kind))}
          end
        end

      assert {:records, :forced, :rows, stream, ^nrows, ^ncols} = Format.select_list(rows, :arrow)

      assert {:ok, ^rows, _} = Format.decode_records(:rows, stream)

      columns = for k <- keys, into: %{}, do: {k, Enum.map(rows, & &1[k])}

      assert {:records, :forced, :columns, stream, ^nrows, ^ncols} =
               Format.select_map(columns, :arrow)

      assert {:ok, ^columns, _} = Format.decode_records(:columns, stream)

      # one bad cell makes it unsuitable, with the reason
      [row | rest] = rows
      k = Enum.random(keys)

      bad =
        Enum.random([{[1], :nested_value}, {:x, :unsupported_value}, {1 <<< 64, :integer_range}])

      assert {:error, %Error{value: reason}} =
               Format.select_list([Map.put(row, k, elem(bad, 0)) | rest], :arrow)

      assert reason in [elem(bad, 1), :mixed_kinds]
    end
  end

  test "records streams that do not rebuild are :bad_call errors with the reason" do
    good = records_stream([{"a", [1, nil]}], "atom", %{"a" => {:s, 64}})
    assert {:ok, [%{a: 1}, %{a: nil}], _} = Format.decode_records(:rows, good)
    assert {:ok, %{a: [1, nil]}, _} = Format.decode_records(:columns, good)

    utf8 = records_stream([{"s", ["é", nil]}], "string", %{"s" => :utf8})
    assert {:ok, [%{"s" => "é"}, %{"s" => nil}], _} = Format.decode_records(:rows, utf8)

    cases = [
      {records_stream([{"a", [1]}], nil, %{"a" => {:s, 64}}), :bad_metadata},
      {records_stream([{"a", [1]}], "json", %{"a" => {:s, 64}}), :bad_metadata},
      {records_stream([{"a", [1]}], "atom", %{"a" => {:s, 32}}), :unsupported_type},
      {records_stream([{"a", [1.0]}], "atom", %{"a" => {:f, 32}}), :unsupported_type},
      {records_stream([{"a", [[1]]}], "atom", %{"a" => {:list, Field.new("item", {:s, 64})}}),
       :unsupported_type},
      {records_stream([{"a", [:nan]}], "atom", %{"a" => {:f, 64}}), :unsupported_value},
      {records_stream([{"no_such_atom_anywhere_bbt", [1]}], "atom", %{
         "no_such_atom_anywhere_bbt" => {:s, 64}
       }), :unknown_atom},
      {binary_part(good, 0, 40), :truncated}
    ]

    for {stream, reason} <- cases do
      assert {:error, %Error{kind: :bad_call, reason: ^reason} = e} =
               Format.decode_records(:rows, stream)

      assert is_binary(e.message)
    end

    {:error, e} =
      Format.decode_records(
        :rows,
        records_stream([{"no_such_atom_anywhere_bbt", [1]}], "atom", %{
          "no_such_atom_anywhere_bbt" => {:s, 64}
        })
      )

    assert e.message =~ ":no_such_atom_anywhere_bbt"

    dup =
      Arrow.encode(%Table{
        schema:
          Schema.new([Field.new("a", {:s, 64}), Field.new("a", {:s, 64})],
            metadata: [{"beambridge.keys", "binary"}]
          ),
        columns: [
          [%Array{type: {:s, 64}, length: 1, data: <<1::little-64>>}],
          [%Array{type: {:s, 64}, length: 1, data: <<2::little-64>>}]
        ],
        num_rows: 1
      })

    assert {:error, %Error{kind: :bad_call, reason: :duplicate_column}} =
             Format.decode_records(:rows, dup)
  end

  ## Bridge.Encoder and Bridge.Decoder: the forms on the wire

  test "arguments: packed and records inline below the threshold, in slices at or above" do
    ints = Enum.to_list(-5..994)
    rows = rows(1000)
    columns = %{a: Enum.to_list(1..5000)}
    args = [ints, rows, columns, %{nested: [ints]}]

    assert {:ok, [p, r, c, %{nested: [p2]}], frames} = encode(args)
    assert map_size(frames) == 0
    assert {:"$bb_packed", "<i2", data} = p
    assert p2 == p
    assert Format.unpack("<i2", data) == {:ok, ints}
    assert {:"$bb_records", :rows, stream} = r
    assert {:ok, ^rows, _} = Format.decode_records(:rows, stream)
    assert {:"$bb_records", :columns, cstream} = c
    assert {:ok, ^columns, _} = Format.decode_records(:columns, cstream)

    # the same values through slices (threshold 1 byte)
    assert {:ok, [p, r, c, _], frames} = encode(args, [], 1)
    assert {:"$bb_slice", :packed, pname} = p
    {h, meta, payload} = frames[pname]
    assert {h.format, h.schema_id, h.schema_version} == {1, 0, 0}
    assert :erlang.binary_to_term(meta) == {"<i2", [1000]}
    assert payload == data

    assert {:"$bb_slice", :records, rname} = r
    {h, meta, payload} = frames[rname]
    assert h.format == 2

    assert :erlang.binary_to_term(meta) == %{
             "layout" => "rows",
             "num_rows" => 1000,
             "num_columns" => 6
           }

    assert {:ok, ^rows, _} = Format.decode_records(:rows, payload)

    assert {:"$bb_slice", :records, cname} = c
    {_h, meta, _payload} = frames[cname]

    assert :erlang.binary_to_term(meta) == %{
             "layout" => "columns",
             "num_rows" => 5000,
             "num_columns" => 1
           }
  end

  test "arguments: format: :etf sends lists and maps unchanged" do
    ints = Enum.to_list(1..1000)
    rows = rows(1000)
    assert {:ok, [^ints, ^rows], _} = encode([ints, rows], format: :etf)
    # :arrow packs number lists as :auto does
    assert {:ok, [{:"$bb_packed", "<i2", _}], _} = encode([ints], format: :arrow)
  end

  test "arguments: forced formats refuse unsuitable values before anything is sent" do
    assert {:error, %Error{kind: :bad_call, reason: :format_unsuitable, value: :different_keys}} =
             encode([[%{a: 1}, %{b: 2}]], format: :arrow)

    assert {:error, %Error{reason: :format_unsuitable, value: :nested_value}} =
             encode([%{deep: [%{a: [1, 2.5]}]}], format: :arrow)

    # a list of numbers :packed cannot pack is sent unchanged
    assert {:ok, [%{deep: [[1, 2.5]]}], _} = encode([%{deep: [[1, 2.5]]}], format: :packed)

    # unsuitable under :auto: plain ETF, same value
    assert {:ok, [[%{a: 1}, %{b: 2}]], _} = encode([[%{a: 1}, %{b: 2}]])
  end

  test "arguments: structs without a serializer go as their map" do
    assert {:ok, [uri], _} = encode([URI.parse("http://x")])
    assert is_map(uri) and uri.__struct__ == URI and uri.host == "x"
  end

  test "results: packed and records forms decode to the ETF value" do
    ints = [-3, 7, 1000]
    data = for x <- ints, into: <<>>, do: <<x::little-16>>
    assert {:ok, ^ints} = decode({:"$bb_packed", "<i2", data})

    assert {:ok, [1.5, -2.0]} =
             decode({:"$bb_packed", "<f8", <<1.5::float-little-64, -2.0::float-little-64>>})

    {:records, _, :rows, stream, _, _} = Format.select_list(rows(10), :arrow)
    expected = rows(10)
    assert {:ok, [%{list: ^expected}]} = decode([%{list: {:"$bb_records", :rows, stream}}])
  end

  test "results: malformed packed terms are :bad_frame, unrebuildable records :bad_call" do
    assert {:error, %Error{kind: :bad_frame, reason: :bad_term}} =
             decode({:"$bb_packed", "<f4", <<0::32>>})

    assert {:error, %Error{kind: :bad_frame, reason: :bad_term}} =
             decode({:"$bb_packed", "<i2", <<0>>})

    assert {:error, %Error{kind: :bad_frame, reason: :bad_term}} =
             decode({:"$bb_records", :diagonal, "x"})

    assert {:error, %Error{kind: :bad_call, reason: :truncated}} =
             decode({:"$bb_records", :rows, "x"})

    assert {:error, %Error{kind: :bad_call, reason: :unknown_type}} =
             decode({:"$bb_custom", "bbt.NoSuchType", 1, "x"})
  end

  # A result handle to a slice this test writes (as the worker would).
  defp decode_slice(kind, payload, frame_opts), do: Wire.decode_slice(kind, payload, frame_opts)

  test "results from slices: packed, records and custom frames, and malformed ones" do
    data = for x <- [1, -2, 300], into: <<>>, do: <<x::little-16>>
    packed = [format: :tensor, metadata: :erlang.term_to_binary({"<i2", [3]})]
    assert {:ok, [1, -2, 300]} = decode_slice(:packed, data, packed)

    for {opts, why} <- [
          {[format: :tensor, metadata: :erlang.term_to_binary({"<i2", [4]})], "3 elements"},
          {[format: :tensor, metadata: :erlang.term_to_binary({"<f4", [3]})], "dtype"},
          {[format: :tensor, metadata: :erlang.term_to_binary({"<i2", [1, 3]})], "metadata"}
        ] do
      assert {:error, %Error{kind: :bad_frame, reason: :bad_term} = e} =
               decode_slice(:packed, data, opts),
             why

      assert e.message =~ "packed"
    end

    # a frame of another format than the kind reads (protocol/registry.json)
    assert {:error, %Error{kind: :bad_frame, reason: :unknown_format} = e} =
             decode_slice(:packed, data,
               format: :raw,
               metadata: :erlang.term_to_binary({"<i2", [3]})
             )

    assert e.message =~ "a tensor (1) frame for kind :packed"

    rows = rows(10)
    {:records, _, :rows, stream, 10, 6} = Format.select_list(rows, :arrow)

    meta = fn layout, r, c ->
      :erlang.term_to_binary(%{"layout" => layout, "num_rows" => r, "num_columns" => c})
    end

    assert {:ok, ^rows} =
             decode_slice(:records, stream, format: :arrow_stream, metadata: meta.("rows", 10, 6))

    columns = Map.new([:id, :x], fn k -> {k, Enum.map(rows, & &1[k])} end)
    {:records, _, :columns, cstream, 10, 2} = Format.select_map(columns, :arrow)

    assert {:ok, ^columns} =
             decode_slice(:records, cstream,
               format: :arrow_stream,
               metadata: meta.("columns", 10, 2)
             )

    assert {:error, %Error{kind: :bad_frame, reason: :bad_metadata}} =
             decode_slice(:records, stream, format: :arrow_stream, metadata: meta.("rows", 11, 6))

    assert {:error, %Error{kind: :bad_frame, reason: :bad_metadata}} =
             decode_slice(:records, stream, format: :arrow_stream, metadata: "")

    assert {:error, %Error{kind: :bad_frame, reason: :unknown_format}} =
             decode_slice(:records, stream, format: :raw, metadata: meta.("rows", 10, 6))

    # a well-formed frame whose stream does not rebuild: the caller's error
    assert {:error, %Error{kind: :bad_call, reason: :truncated}} =
             decode_slice(:records, "nonsense",
               format: :arrow_stream,
               metadata: meta.("rows", 1, 1)
             )

    :ok =
      Bridge.Serializer.register(URI,
        name: "bbt.URI",
        version: 3,
        encode: &URI.to_string/1,
        decode: fn bin, 3 -> {:ok, URI.parse(bin)} end
      )

    try do
      {:ok, id} = Bridge.NIF.xxh3_64("bbt.URI")

      custom = fn id, v, meta ->
        [
          format: :custom,
          schema_id: id,
          schema_version: v,
          metadata: :erlang.term_to_binary(meta)
        ]
      end

      uri = URI.parse("http://example.org/x")

      assert {:ok, ^uri} =
               decode_slice(:custom, "http://example.org/x", custom.(id, 3, {"bbt.URI", 3}))

      for opts <- [
            custom.(id + 1, 3, {"bbt.URI", 3}),
            custom.(id, 2, {"bbt.URI", 3}),
            custom.(id, 3, {"bbt.URI", 2}),
            custom.(id, 3, {"bbt.Other", 3}),
            custom.(id, 3, "bbt.URI")
          ] do
        assert {:error, %Error{kind: :bad_frame, reason: :bad_metadata}} =
                 decode_slice(:custom, "x", opts)
      end

      assert {:error, %Error{kind: :bad_frame, reason: :unknown_format}} =
               decode_slice(
                 :custom,
                 "x",
                 Keyword.put(custom.(id, 3, {"bbt.URI", 3}), :format, :raw)
               )

      {:ok, other} = Bridge.NIF.xxh3_64("bbt.Other")

      assert {:error, %Error{kind: :bad_call, reason: :unknown_type}} =
               decode_slice(:custom, "x", custom.(other, 1, {"bbt.Other", 1}))
    after
      Bridge.Serializer.unregister(URI)
    end
  end

  ## Counting and logging

  test "decisions are counted per direction, form and reason" do
    Bridge.reset_format_stats()

    # 1..1000 packed (2000 bytes); [1, 2] ETF (too short); 1000 rows as records;
    # "bin" raw inline; the map of one 300-element list as records (300 cells);
    # 0..255 packed (256 bytes)
    args = [
      Enum.to_list(1..1000),
      [1, 2],
      rows(1000),
      "bin",
      %{k: Enum.to_list(1..300)},
      Enum.to_list(0..255)
    ]

    assert {:ok, _, _} = encode(args)
    assert {:ok, _, _} = encode([Enum.to_list(1..1000)], [], 1)

    assert {2, 2256} = stat(:to_python, :packed, :auto)
    assert {1, 2000} = stat(:to_python, :packed_slice, :auto)
    assert {1, _} = stat(:to_python, :etf, :below_min)
    assert {2, records_bytes} = stat(:to_python, :records, :auto)
    assert records_bytes > 1000
    assert {1, 3} = stat(:to_python, :raw, :below_threshold)

    assert {:ok, _, _} = encode([Enum.to_list(1..10)], format: :etf)
    assert {1, _} = stat(:to_python, :etf, :policy)

    assert {:ok, _} = decode({:"$bb_packed", "|u1", <<1, 2>>})
    assert {1, 2} = stat(:from_python, :packed, :received)

    Bridge.reset_format_stats()
    assert Bridge.format_stats() == []
  end

  test "counting is exact when many processes encode at once" do
    Bridge.reset_format_stats()
    list = Enum.to_list(1..1000)

    1..20
    |> Enum.map(fn _ ->
      Task.async(fn -> for _ <- 1..10, do: {:ok, _, _} = encode([list, list]) end)
    end)
    |> Enum.each(&Task.await(&1, 30_000))

    assert {400, 800_000} = stat(:to_python, :packed, :auto)
  end

  test "decisions are logged at debug level when log_formats is set" do
    level = Logger.level()
    Logger.configure(level: :debug)
    Application.put_env(:beambridge, :log_formats, true)

    log =
      try do
        capture_log([level: :debug], fn ->
          assert {:ok, _, _} = encode([Enum.to_list(1..1000), rows(1000)], [], 1)
          assert {:ok, _, _} = encode([["a", "b"]])
        end)
      after
        Logger.configure(level: level)
        Application.delete_env(:beambridge, :log_formats)
      end

    assert log =~ "number list of 1000 elements -> packed_slice (auto)"
    assert log =~ "rows records (1000 x 6) -> records_slice (auto)"
    assert log =~ "small value(s) -> raw (below_threshold)"
  end
end
