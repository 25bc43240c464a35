defmodule Bridge.TableTest do
  # Bridge.Table: building from rows and columns, type inference, declared
  # schemas, and a typed error (never a silent change) for lossy input.
  use ExUnit.Case, async: true

  alias Bridge.{Error, Table}
  alias Bridge.Arrow.{Field, Schema}

  defp types(table), do: Enum.map(Table.schema(table).fields, &{&1.name, &1.type})

  describe "inference" do
    test "each kind of value gets its type" do
      t =
        Table.from_columns!(
          i: [1, nil],
          f: [1.5, nil],
          b: [true, nil],
          s: ["ü", nil],
          bin: ["ok", <<255>>],
          d: [~D[2024-01-01], nil],
          n: [~N[2024-01-01 00:00:00], nil],
          u: [~U[2024-01-01 00:00:00Z], nil],
          l: [[1], nil],
          z: [nil, nil]
        )

      assert types(t) == [
               {"i", {:s, 64}},
               {"f", {:f, 64}},
               {"b", :bool},
               {"s", :utf8},
               {"bin", :binary},
               {"d", :date32},
               {"n", {:timestamp, :us, nil}},
               {"u", {:timestamp, :us, "UTC"}},
               {"l", {:list, Field.new("item", {:s, 64})}},
               {"z", :null}
             ]

      assert Table.to_rows(t) |> hd() |> Map.get("bin") == "ok"
    end

    test "lists infer their item type from all items; empty lists are lists of null" do
      t = Table.from_columns!(a: [[1, nil], [], [2]], b: [[], [], nil], c: [[["x"]], [[]], nil])

      assert [
               {"a", {:list, %Field{type: {:s, 64}}}},
               {"b", {:list, %Field{type: :null}}},
               {"c", {:list, %Field{type: {:list, %Field{type: :utf8}}}}}
             ] = types(t)
    end

    test "rows with atom or string keys become string-named columns in name order" do
      t = Table.from_rows!([%{b: 1, a: "x"}, %{b: 2, a: "y"}])
      assert Table.column_names(t) == ["a", "b"]
      assert Table.to_rows(t, keys: :atoms) == [%{a: "x", b: 1}, %{a: "y", b: 2}]
      assert Table.num_rows(t) == 2
    end
  end

  describe "lossy or ambiguous input is a typed error" do
    defp error(fun) do
      assert {:error, %Error{kind: :bad_call} = e} = fun.()
      assert is_binary(e.message)
      e
    end

    test "integers beyond int64 say which type to declare" do
      e = error(fn -> Table.from_columns(x: [1, 2 ** 63]) end)
      assert e.reason == :integer_overflow and e.message =~ "{:u, 64}"
      e = error(fn -> Table.from_columns(x: [-(2 ** 63) - 1]) end)
      assert e.reason == :integer_overflow and e.message =~ "strings"
      assert {:ok, _} = Table.from_columns([x: [2 ** 64 - 1]], schema: [x: {:u, 64}])

      assert error(fn -> Table.from_columns([x: [256]], schema: [x: {:u, 8}]) end).reason ==
               :integer_overflow

      assert error(fn -> Table.from_columns([x: [-1]], schema: [x: {:u, 64}]) end).reason ==
               :integer_overflow
    end

    test "mixed kinds in a column" do
      e = error(fn -> Table.from_columns(x: [1, 2.0]) end)
      assert e.reason == :mixed_types and e.message =~ "{:f, 64}"
      assert error(fn -> Table.from_columns(x: ["a", 1]) end).reason == :mixed_types

      assert error(fn ->
               Table.from_columns(x: [~N[2024-01-01 00:00:00], ~U[2024-01-01 00:00:00Z]])
             end).reason == :mixed_types

      assert error(fn -> Table.from_columns(x: [[1], [1.5]]) end).reason == :mixed_types
      # Declared, integers that floats hold exactly are accepted.
      assert Table.from_columns!([x: [1, 2.5]], schema: [x: {:f, 64}]) |> Table.column!("x") == [
               1.0,
               2.5
             ]

      assert error(fn -> Table.from_columns([x: [2 ** 60 + 1]], schema: [x: {:f, 64}]) end).reason ==
               :inexact_float
    end

    test "atoms, NaN, tuples, maps and other structs" do
      assert error(fn -> Table.from_columns(x: [:nan]) end).message =~ "{:f, 64}"
      assert error(fn -> Table.from_columns(x: [:ok]) end).message =~ "Atom.to_string"
      assert error(fn -> Table.from_columns(x: [{1, 2}]) end).reason == :unsupported_value
      assert error(fn -> Table.from_columns(x: [%{1 => 1}]) end).reason == :unsupported_value
      assert error(fn -> Table.from_columns(x: [~T[10:00:00]]) end).reason == :unsupported_value
      assert error(fn -> Table.from_columns(x: [self()]) end).reason == :unsupported_value

      assert error(fn -> Table.from_columns([x: [:nope]], schema: [x: {:f, 32}]) end).reason ==
               :wrong_type
    end

    test "bad names, ragged columns, inconsistent rows" do
      assert error(fn -> Table.from_rows([%{1 => "a"}]) end).reason == :bad_column_name
      assert error(fn -> Table.from_rows([%{{:a} => "a"}]) end).reason == :bad_column_name
      assert error(fn -> Table.from_rows([%{:a => 1, "a" => 2}]) end).reason == :duplicate_column

      assert error(fn -> Table.from_rows([%{a: 1}, %{a: 1, b: 2}]) end).reason ==
               :inconsistent_keys

      assert error(fn -> Table.from_rows([%{a: 1}, [a: 1]]) end).reason == :wrong_type
      assert error(fn -> Table.from_rows(:x) end).reason == :wrong_type
      assert error(fn -> Table.from_columns(a: [1], b: [1, 2]) end).reason == :ragged_columns
      assert error(fn -> Table.from_columns(a: 1) end).reason == :wrong_type
    end

    test "declared types check each value" do
      assert error(fn -> Table.from_columns([s: [<<255>>]], schema: [s: :utf8]) end).reason ==
               :invalid_utf8

      assert error(fn ->
               Table.from_columns([t: [~N[2024-01-01 00:00:00.5]]],
                 schema: [t: {:timestamp, :s, nil}]
               )
             end).reason == :inexact_temporal

      assert error(fn ->
               Table.from_columns([t: [~N[2024-01-01 00:00:00]]],
                 schema: [t: {:timestamp, :s, "UTC"}]
               )
             end).reason == :wrong_type

      assert error(fn ->
               Table.from_columns([t: [~U[2024-01-01 00:00:00Z]]],
                 schema: [t: {:timestamp, :s, nil}]
               )
             end).reason == :wrong_type

      assert error(fn -> Table.from_columns([n: [1]], schema: [n: :null]) end).reason ==
               :wrong_type

      assert error(fn -> Table.from_columns([x: [1]], schema: [x: {:s, 7}]) end).reason ==
               :bad_schema

      assert error(fn ->
               Table.from_columns([x: [nil]], schema: [Field.new("x", {:s, 8}, nullable: false)])
             end).reason == :null_in_non_nullable

      assert error(fn -> Table.from_columns([a: [1]], schema: [b: {:s, 8}]) end).reason ==
               :missing_column
    end

    test "DateTimes in different zones" do
      paris = %DateTime{
        ~U[2024-01-01 00:00:00Z]
        | time_zone: "Europe/Paris",
          zone_abbr: "CET",
          utc_offset: 3600
      }

      e = error(fn -> Table.from_columns(x: [~U[2024-01-01 00:00:00Z], paris]) end)
      assert e.message =~ "shift_zone"
      assert types(Table.from_columns!(x: [paris])) == [{"x", {:timestamp, :us, "Europe/Paris"}}]
      # The instant is kept; it comes back in UTC.
      assert Table.from_columns!(x: [paris]) |> Table.column!("x") == [
               ~U[2023-12-31 23:00:00.000000Z]
             ]
    end
  end

  describe "declared schemas" do
    test "a Schema fixes order, types, nullability and metadata" do
      schema =
        Schema.new([Field.new("b", :large_utf8, nullable: false), Field.new("a", {:s, 8})],
          metadata: [{"m", "1"}]
        )

      t = Table.from_rows!([%{a: 1, b: "x"}], schema: schema)
      assert t.schema == schema
      assert Table.to_rows(t) == [%{"a" => 1, "b" => "x"}]
    end

    test "a partial list declares some columns; the others are inferred after them" do
      t = Table.from_columns!([a: [1], b: [2], c: [3]], schema: [c: {:u, 8}])
      assert types(t) == [{"c", {:u, 8}}, {"a", {:s, 64}}, {"b", {:s, 64}}]
    end

    test "empty rows with a schema make an empty table of that schema" do
      t = Table.from_rows!([], schema: [x: :utf8])
      assert {Table.num_rows(t), types(t)} == {0, [{"x", :utf8}]}
    end
  end

  describe "values out" do
    test "temporal values: native, integer, and the lossy cases" do
      t =
        Table.from_columns!([ns: [1_000, 1], d: [86_400_000, 1]],
          schema: [ns: {:timestamp, :ns, nil}, d: :date64]
        )

      assert Table.column(t, "ns", temporal: :integer) == {:ok, [1_000, 1]}

      assert_raise Error, ~r/inexact_temporal.*temporal: :integer/, fn ->
        Table.column(t, "ns")
      end

      assert_raise Error, ~r/inexact_temporal/, fn -> Table.column(t, "d") end
      big = Table.from_columns!([d: [2 ** 31 - 1]], schema: [d: :date32])
      assert_raise Error, ~r/temporal_out_of_range/, fn -> Table.to_rows(big) end
    end

    test "column/3, chunks/2 and the inspect form" do
      t = Table.from_columns!(x: [1])
      assert {:error, %Error{reason: :unknown_column}} = Table.column(t, "nope")
      assert_raise Error, fn -> Table.chunks(t, :nope) end
      assert inspect(t) == "#Bridge.Table<1 rows; x: int64>"
    end
  end
end
