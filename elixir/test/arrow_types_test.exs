defmodule Bridge.ArrowTypesTest do
  # Every Arrow type beyond the flat ones in Bridge.Arrow and Bridge.Table:
  # the values each comes out as, the typed errors for values that do not fit,
  # and hostile buffers refused with typed errors (pyarrow cross-checks are in
  # tests/cross/test_arrow_types.py).
  use ExUnit.Case, async: true

  alias Bridge.{Arrow, Error, Table}
  alias Bridge.Arrow.{Array, Decimal, Field, Type}
  alias Bridge.Test.ArrowSamples, as: Samples

  defp round_trip(table) do
    assert {:ok, back} = Arrow.decode(Arrow.encode(table))
    back
  end

  defp build_error(columns, schema) do
    assert {:error, %Error{kind: :bad_call} = e} = Table.from_columns(columns, schema: schema)
    e
  end

  test "every type comes back with the documented values and the same schema" do
    table = Samples.table()
    back = round_trip(table)
    assert back.schema == table.schema
    assert Table.to_columns(back) == Samples.expected()
  end

  test "an empty table of every type, and several batches, round-trip" do
    empty =
      Table.from_columns!(Enum.map(Samples.columns(), fn {n, _} -> {n, []} end),
        schema: Samples.schema()
      )

    back = round_trip(empty)
    assert back.num_rows == 0 and back.schema == empty.schema

    one = Samples.table()
    two = %Table{one | columns: Enum.map(one.columns, &(&1 ++ &1)), num_rows: 6}
    back = round_trip(two)
    assert back.num_rows == 6

    assert Table.column!(back, "sparse") ==
             List.duplicate([{3, 42}, {9, "x"}, {3, nil}], 2) |> Enum.concat()
  end

  test "decoded fixed-width buffers stay sub-binaries of the stream" do
    # (The VM copies binaries under 64 bytes: the columns are longer than that.)
    item = Field.new("item", {:f, 32})
    emb = List.duplicate([1.0, 2.0, 3.0], 100)
    uuids = List.duplicate(<<1::128>>, 100)

    table =
      Table.from_columns!([e: emb, u: uuids],
        schema: [e: {:fixed_size_list, item, 3}, u: {:fixed_size_binary, 16}]
      )

    stream = Arrow.encode(table)
    {:ok, t} = Arrow.decode(stream)
    [%Array{children: [floats]}] = Table.chunks(t, "e")
    [%Array{data: data}] = Table.chunks(t, "u")

    for buffer <- [floats.data, data] do
      assert :binary.referenced_byte_size(buffer) == byte_size(stream)
    end

    assert Table.column!(t, "e") == emb
  end

  test "a fixed-size list column of numbers is a tensor over the column's buffer" do
    item = Field.new("item", {:f, 32})
    rows = for i <- 1..100, do: [i * 1.0, -i * 1.0, 0.5]

    table =
      Table.from_columns!([e: rows, n: Enum.to_list(1..100)],
        schema: [e: {:fixed_size_list, item, 3}]
      )

    stream = Arrow.encode(table)
    {:ok, t} = Arrow.decode(stream)

    assert {:ok, %Bridge.Tensor{dtype: {:f, 32}, shape: {100, 3}} = tensor} =
             Table.to_tensor(t, "e")

    assert :binary.referenced_byte_size(tensor.data) == byte_size(stream)
    assert Bridge.Tensor.to_list(tensor) == List.flatten(rows)
    assert {:ok, %Bridge.Tensor{dtype: {:s, 64}, shape: {100}}} = Table.to_tensor(t, :n)

    # nested fixed-size lists are more dimensions; several chunks are concatenated
    inner = {:fixed_size_list, Field.new("item", {:s, 16}), 2}

    cube =
      Table.from_columns!([c: [[[1, 2], [3, 4], [5, 6]]]],
        schema: [c: {:fixed_size_list, Field.new("item", inner), 3}]
      )

    two = %Table{cube | columns: [hd(cube.columns) ++ hd(cube.columns)], num_rows: 2}
    assert {:ok, %Bridge.Tensor{shape: {2, 3, 2}} = c} = Table.to_tensor(round_trip(two), "c")
    assert Bridge.Tensor.to_list(c) == List.flatten(List.duplicate([[1, 2], [3, 4], [5, 6]], 2))
  end

  test "nulls past the rows a fixed-size list uses do not stop a tensor" do
    item = Field.new("item", {:f, 32})

    child = %Array{
      type: {:f, 32},
      length: 3,
      null_count: 1,
      validity: <<0b011>>,
      data: <<1.0::float-32-little, 2.0::float-32-little, 0::32>>
    }

    type = {:fixed_size_list, item, 2}

    t = %Table{
      schema: Bridge.Arrow.Schema.new([Field.new("e", type)]),
      num_rows: 1,
      columns: [[%Array{type: type, length: 1, children: [child]}]]
    }

    assert {:ok, %Bridge.Tensor{shape: {1, 2}} = tensor} = Table.to_tensor(round_trip(t), "e")
    assert Bridge.Tensor.to_list(tensor) == [1.0, 2.0]
  end

  test "columns that are not tensors say why" do
    item = Field.new("item", {:f, 32})
    schema = [e: {:fixed_size_list, item, 2}, f: {:fixed_size_list, item, 2}]

    t =
      Table.from_columns!([e: [[1.0, 2.0], nil], f: [[1.0, nil], [2.0, 3.0]], s: ["a", "b"]],
        schema: schema
      )

    assert {:error, %Error{reason: :has_nulls}} = Table.to_tensor(t, "e")
    assert {:error, %Error{reason: :has_nulls}} = Table.to_tensor(t, "f")
    assert {:error, %Error{reason: :not_a_tensor} = e} = Table.to_tensor(t, "s")
    assert e.message =~ "column/3"
    assert {:error, %Error{reason: :unknown_column}} = Table.to_tensor(t, "nope")
  end

  test "union values may be tagged by a member's name; maps may be given as Elixir maps" do
    schema = [
      {"u", {:union, :dense, [Field.new("i", {:s, 8}), Field.new("s", :utf8)], [5, 6]}},
      {"m", Type.map(:utf8, :bool)}
    ]

    t = Table.from_columns!([u: [{"s", "x"}, {:i, 1}], m: [%{"k" => true}, nil]], schema: schema)

    assert Table.to_columns(round_trip(t)) == %{
             "u" => [{6, "x"}, {5, 1}],
             "m" => [[{"k", true}], nil]
           }
  end

  test "from_rows infers struct and list-of-struct columns from nested maps" do
    rows = [
      %{
        id: 1,
        user: %{name: "ada", tags: ["x"]},
        items: [%{sku: "a-1", qty: 2}, %{sku: "b", qty: nil}]
      },
      %{id: 2, user: nil, items: []},
      %{id: 3, user: %{name: nil, tags: []}, items: nil}
    ]

    t = Table.from_rows!(rows)
    types = Map.new(t.schema.fields, &{&1.name, Type.describe(&1.type)})
    assert types["user"] == "struct<name: string, tags: list<item: string>>"
    assert types["items"] == "list<item: struct<qty: int64, sku: string>>"

    assert Table.to_rows(round_trip(t)) == [
             %{
               "id" => 1,
               "user" => %{"name" => "ada", "tags" => ["x"]},
               "items" => [%{"sku" => "a-1", "qty" => 2}, %{"sku" => "b", "qty" => nil}]
             },
             %{"id" => 2, "user" => nil, "items" => []},
             %{"id" => 3, "user" => %{"name" => nil, "tags" => []}, "items" => nil}
           ]
  end

  test "maps that would make an ambiguous struct column are refused with what to do" do
    assert {:error, %Error{reason: :inconsistent_keys} = e} =
             Table.from_rows([%{u: %{a: 1}}, %{u: %{b: 1}}])

    assert e.message =~ "put nil where a value is missing"

    assert {:error, %Error{reason: :inconsistent_keys}} =
             Table.from_columns(l: [[%{a: 1}], [%{a: 1, b: 2}]])

    assert {:error, %Error{reason: :unsupported_value} = e} = Table.from_rows([%{u: %{1 => 1}}])
    assert e.message =~ "Bridge.Arrow.Type.map"

    assert {:error, %Error{reason: :unsupported_value} = e} =
             Table.from_columns(u: [%{:a => 1, "a" => 2}])

    assert e.message =~ "as an atom and as a string"

    # declared, a map column takes any keys
    t = Table.from_columns!([m: [%{1 => "one"}]], schema: [m: Type.map({:s, 64}, :utf8)])
    assert Table.column!(round_trip(t), "m") == [[{1, "one"}]]
  end

  test "values that do not fit their type are typed errors naming the column and row" do
    cases = [
      {[d: [Decimal.new(1, 3)]], [d: {:decimal, 128, 5, 2}], :inexact_decimal},
      {[d: [Decimal.new(100_000, 2)]], [d: {:decimal, 32, 5, 2}], :decimal_overflow},
      {[d: [1.5]], [d: {:decimal, 64, 5, 2}], :wrong_type},
      {[b: ["abc"]], [b: {:fixed_size_binary, 4}], :wrong_type},
      {[t: [~T[00:00:00.5]]], [t: {:time32, :s}], :inexact_temporal},
      {[t: [86_400]], [t: {:time32, :s}], :wrong_type},
      {[i: [{1, 2}]], [i: {:interval, :month_day_nano}], :wrong_type},
      {[i: [{1, 1 <<< 40}]], [i: {:interval, :day_time}], :wrong_type},
      {[l: [[1, 2]]], [l: {:fixed_size_list, Field.new("item", {:s, 8}), 3}], :wrong_type},
      {[s: [%{"z" => 1}]], [s: {:struct, [Field.new("a", {:s, 8})]}], :unknown_field},
      {[s: [%{"a" => nil}]], [s: {:struct, [Field.new("a", {:s, 8}, nullable: false)]}],
       :null_in_non_nullable},
      {[m: [[{nil, 1}]]], [m: Type.map(:utf8, {:s, 8})], :null_in_non_nullable},
      {[m: [[1]]], [m: Type.map(:utf8, {:s, 8})], :wrong_type},
      {[u: [{7, 1}]], [u: {:union, :sparse, [Field.new("a", {:s, 8})], [0]}],
       :unknown_union_member},
      {[u: [1]], [u: {:union, :sparse, [Field.new("a", {:s, 8})], [0]}], :wrong_type},
      {[r: List.duplicate(1, 40_000)],
       [r: {:run_end_encoded, Field.new("e", {:s, 16}), Field.new("v", {:s, 8})}],
       :integer_overflow},
      {[v: [<<255>>]], [v: :utf8_view], :invalid_utf8}
    ]

    for {columns, schema, reason} <- cases do
      e = build_error(columns, schema)
      assert e.reason == reason, inspect({columns, e})
      assert e.message =~ "column"
    end
  end

  test "what to_rows gives, from_rows takes back: unions and run-end values under null parents" do
    sparse = {:union, :sparse, [Field.new("i", {:s, 8}, nullable: false)], [0]}
    dense = {:union, :dense, [Field.new("i", {:s, 8}, nullable: false)], [0]}
    ree = {:run_end_encoded, Field.new("e", {:s, 16}), Field.new("v", :utf8, nullable: false)}

    schema = [
      s: {:struct, [Field.new("u", sparse)]},
      l: {:fixed_size_list, Field.new("item", dense), 1},
      r: {:struct, [Field.new("x", ree)]}
    ]

    t =
      Table.from_columns!(
        [s: [%{"u" => {0, 1}}, nil], l: [[{0, 2}], nil], r: [%{"x" => "a"}, nil]],
        schema: schema
      )

    back = round_trip(t)
    columns = Table.to_columns(back)
    again = Table.from_columns!(Enum.map(~w(s l r), &{&1, columns[&1]}), schema: schema)
    assert Table.to_columns(round_trip(again)) == columns
    assert columns["s"] == [%{"u" => {0, 1}}, nil]
  end

  test "map keys may be dictionary-encoded; decimal scales may be far from zero" do
    schema = [
      m: Type.map({:dictionary, {:s, 8}, :utf8, false}, {:s, 64}),
      d: {:decimal, 128, 5, -2000}
    ]

    t =
      Table.from_columns!([m: [[{"a", 1}, {"a", 2}]], d: [Decimal.new(12_345, -2000)]],
        schema: schema
      )

    assert Table.to_columns(round_trip(t)) == %{
             "m" => [[{"a", 1}, {"a", 2}]],
             "d" => [Decimal.new(12_345, -2000)]
           }

    # a value 77 digits or more from the column's scale is refused without computing 10^n
    e = build_error([d: [Decimal.new(1, -1_000_000_000)]], d: {:decimal, 128, 5, 0})
    assert e.reason == :decimal_overflow
  end

  test "stored temporal values that would wrap around are refused" do
    assert build_error([d: [1 <<< 40]], d: :date32).reason == :temporal_out_of_range
    too_far = ~N[2300-01-01 00:00:00]
    e = build_error([t: [too_far]], t: {:timestamp, :ns, nil})
    assert e.reason == :temporal_out_of_range and e.message =~ "coarser unit"
    assert %Table{} = Table.from_columns!([t: [too_far]], schema: [t: {:timestamp, :us, nil}])
  end

  test "map keys that are not UTF-8 do not make a struct column" do
    assert {:error, %Error{reason: :unsupported_value} = e} =
             Table.from_rows([%{"x" => %{<<255>> => 1}}])

    assert e.message =~ "UTF-8"
  end

  test "values with no exact Elixir term raise typed errors that say what to do" do
    t = Table.from_columns!([t: [1]], schema: [t: {:time64, :ns}])
    e = assert_raise Error, fn -> Table.to_columns(t) end
    assert e.reason == :inexact_temporal and e.message =~ "temporal: :integer"
    assert Table.to_columns(t, temporal: :integer) == %{"t" => [1]}

    dup = {:struct, [Field.new("a", {:s, 8}), Field.new("a", :utf8)]}

    t = %Table{
      schema: Bridge.Arrow.Schema.new([Field.new("s", dup)]),
      num_rows: 1,
      columns: [
        [
          %Array{
            type: dup,
            length: 1,
            children: [
              %Array{type: {:s, 8}, length: 1, data: <<1>>},
              %Array{type: :utf8, length: 1, offsets: <<0::32, 1::little-32>>, data: "x"}
            ]
          }
        ]
      ]
    }

    back = round_trip(t)
    e = assert_raise Error, fn -> Table.to_rows(back) end
    assert e.reason == :duplicate_field
  end

  # A hand-built column (buffers as given) in a one-column table.
  defp forged(type, array) do
    %Table{
      schema: Bridge.Arrow.Schema.new([Field.new("c", type)]),
      columns: [[array]],
      num_rows: array.length
    }
  end

  test "hostile buffers of the new layouts are refused with typed errors" do
    view = fn len, index, offset ->
      <<len::little-32, "abcd", index::little-32, offset::little-32>>
    end

    sparse = {:union, :sparse, [Field.new("a", {:s, 8})], [4]}
    dense = {:union, :dense, [Field.new("a", {:s, 8})], [4]}
    ree = {:run_end_encoded, Field.new("e", {:s, 32}), Field.new("v", {:s, 8})}
    lv = {:list_view, Field.new("item", {:s, 8})}
    int8 = fn n -> %Array{type: {:s, 8}, length: n, data: :binary.copy(<<1>>, n)} end

    cases = [
      {:bad_view,
       forged(:binary_view, %Array{
         type: :binary_view,
         length: 1,
         data: view.(20, 1, 0),
         variadic: [:binary.copy("x", 20)]
       })},
      {:bad_view,
       forged(:binary_view, %Array{
         type: :binary_view,
         length: 1,
         data: view.(20, 0, 5),
         variadic: [:binary.copy("x", 20)]
       })},
      {:bad_utf8,
       forged(:utf8_view, %Array{type: :utf8_view, length: 1, data: <<1::little-32, 255, 0::88>>})},
      {:bad_union,
       forged(sparse, %Array{type: sparse, length: 1, data: <<5>>, children: [int8.(1)]})},
      {:bad_union,
       forged(dense, %Array{
         type: dense,
         length: 1,
         data: <<4>>,
         offsets: <<1::little-32>>,
         children: [int8.(1)]
       })},
      {:bad_length,
       forged(sparse, %Array{type: sparse, length: 2, data: <<4, 4>>, children: [int8.(1)]})},
      {:bad_run_ends,
       forged(ree, %Array{
         type: ree,
         length: 3,
         children: [
           %Array{type: {:s, 32}, length: 2, data: <<2::little-32, 2::little-32>>},
           int8.(2)
         ]
       })},
      {:bad_run_ends,
       forged(ree, %Array{
         type: ree,
         length: 3,
         children: [%Array{type: {:s, 32}, length: 1, data: <<2::little-32>>}, int8.(1)]
       })},
      {:bad_offsets,
       forged(lv, %Array{
         type: lv,
         length: 1,
         offsets: <<1::little-32>>,
         sizes: <<2::little-32>>,
         children: [int8.(2)]
       })},
      {:bad_length,
       forged({:fixed_size_list, Field.new("item", {:s, 8}), 2}, %Array{
         type: {:fixed_size_list, Field.new("item", {:s, 8}), 2},
         length: 2,
         children: [int8.(3)]
       })},
      {:bad_length,
       forged({:struct, [Field.new("a", {:s, 8})]}, %Array{
         type: {:struct, [Field.new("a", {:s, 8})]},
         length: 2,
         children: [int8.(1)]
       })}
    ]

    for {reason, table} <- cases do
      assert {:error, %Error{kind: :arrow} = e} = Arrow.decode(Arrow.encode(table))
      assert e.reason == reason, inspect({table.schema, e})
    end

    # and decoding still works afterwards
    assert %Table{} = round_trip(Samples.table())
  end

  test "a variadic buffer count beyond the buffers is refused before anything is allocated" do
    # (Found by the fuzz test: a count of 2^40 once built a list that long.)
    batch = %{
      length: 1,
      nodes: <<1::little-64, 0::64>>,
      buffers: <<0::little-64, 0::little-64, 0::little-64, 16::little-64>>,
      compression: nil,
      variadic: [1 <<< 40],
      version: 4
    }

    e =
      catch_throw(
        Bridge.Arrow.RecordBatch.load(
          [Field.new("v", :binary_view)],
          [],
          batch,
          <<0::128>>,
          %{},
          []
        )
      )

    assert {:bridge_arrow, %Error{reason: :bad_length, field: :variadic_buffer_counts}} = e
  end

  test "list views that repeat their child past :max_rows are refused" do
    # 100 slots, each the whole 100-element child: 10,000 values from 100
    lv = {:list_view, Field.new("item", {:s, 8})}
    n = 100
    offsets = :binary.copy(<<0::little-32>>, n)
    sizes = :binary.copy(<<n::little-32>>, n)
    child = %Array{type: {:s, 8}, length: n, data: :binary.copy(<<1>>, n)}
    t = forged(lv, %Array{type: lv, length: n, offsets: offsets, sizes: sizes, children: [child]})
    stream = Arrow.encode(t)
    assert {:ok, _} = Arrow.decode(stream)
    assert {:ok, _} = Arrow.decode(stream, max_rows: 10_000)

    assert {:error, %Error{reason: :too_many_rows, field: :list_view_sizes}} =
             Arrow.decode(stream, max_rows: 9_999)
  end

  test "a dictionary whose values hold a dictionary is refused; big-endian streams too" do
    inner = {:dictionary, {:s, 8}, :utf8, false}
    refute Type.valid?({:dictionary, {:s, 8}, inner, false})
    refute Type.valid?({:dictionary, {:s, 8}, {:list, Field.new("item", inner)}, false})

    stream = Arrow.encode(Table.from_columns!(x: [1]))
    # The Schema's endianness is its first field; flip it through the flatbuffer.
    {:ok, %Table{}} = Arrow.decode(stream)
    big = Bridge.Test.ArrowSamples.big_endian(stream)
    assert {:error, %Error{kind: :arrow, reason: :big_endian} = e} = Arrow.decode(big)
    assert e.message =~ "little-endian"
  end

  test "the type table's helpers describe every type as pyarrow prints it" do
    for %Field{type: type} <- Samples.schema() do
      assert Type.valid?(type)
      assert is_binary(Type.describe(type))
    end

    assert Type.describe({:union, :dense, [Field.new("a", {:s, 8})], [4]}) ==
             "dense_union<a: int8>"

    assert Type.describe({:time64, :ns}) == "time64[ns]"
  end

  defp a <<< b, do: Bitwise.<<<(a, b)
end
