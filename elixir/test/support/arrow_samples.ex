defmodule Bridge.Test.ArrowSamples do
  @moduledoc false
  # A table with a column of every Arrow type beyond the flat ones, built from
  # Elixir terms: the values each type comes out as (Bridge.Arrow.Values) and
  # goes in as (Bridge.Arrow.Builder). Shared by arrow_types_test.exs and the
  # fuzz corpus.

  import Bitwise

  alias Bridge.Arrow.{Decimal, Field, Type}
  alias Bridge.Table

  def field(name, type, opts \\ []), do: Field.new(name, type, opts)

  def schema do
    point = {:struct, [field("x", {:f, 64}), field("y", {:f, 64}, nullable: false)]}

    [
      field("dec32", {:decimal, 32, 9, 2}),
      field("dec64", {:decimal, 64, 18, -3}),
      field("dec128", {:decimal, 128, 38, 10}),
      field("dec256", {:decimal, 256, 76, 0}),
      field("uuid", {:fixed_size_binary, 16}),
      field("t32", {:time32, :ms}),
      field("t64", {:time64, :ns}),
      field("dur", {:duration, :us}),
      field("ym", {:interval, :year_month}),
      field("dt", {:interval, :day_time}),
      field("mdn", {:interval, :month_day_nano}),
      field("point", point),
      field("points", {:list, field("item", point)}),
      field("emb", {:fixed_size_list, field("item", {:f, 32}), 3}),
      field("attrs", Type.map(:utf8, {:s, 64})),
      field("sparse", {:union, :sparse, [field("i", {:s, 32}), field("s", :utf8)], [3, 9]}),
      field("dense", {:union, :dense, [field("i", {:s, 32}), field("b", :bool)], [0, 1]}),
      field(
        "ree",
        {:run_end_encoded, field("run_ends", {:s, 32}, nullable: false), field("values", :utf8)}
      ),
      field("sv", :utf8_view),
      field("bv", :binary_view),
      field("lv", {:list_view, field("item", {:s, 16})}),
      field("llv", {:large_list_view, field("item", :utf8)}),
      field("dict_list", {:dictionary, {:s, 8}, {:list, field("item", {:s, 64})}, false}),
      field("nested_dict", {:struct, [field("tag", {:dictionary, {:u, 8}, :utf8, false})]})
    ]
  end

  def columns do
    long = String.duplicate("long string ", 3)

    [
      {"dec32", [Decimal.new(-1234, 2), nil, 7]},
      {"dec64", [Decimal.new(5, -3), nil, Decimal.new(-123_000, 0)]},
      {"dec128", [Decimal.new(10 ** 37, 10), nil, Decimal.new(-1, 10)]},
      {"dec256", [10 ** 75, nil, -(10 ** 75)]},
      {"uuid", [<<1::128>>, nil, <<(1 <<< 128) - 1::128>>]},
      {"t32", [~T[12:34:56.789], nil, ~T[00:00:00.000]]},
      {"t64", [~T[23:59:59.999999], nil, 1000]},
      {"dur", [-1, nil, 86_400_000_000]},
      {"ym", [13, nil, -1]},
      {"dt", [{1, 500}, nil, {-2, 0}]},
      {"mdn", [{1, 2, 3_000_000_000}, nil, {0, -1, -5}]},
      {"point", [%{"x" => 1.0, "y" => 2.0}, nil, %{"x" => nil, "y" => -0.5}]},
      {"points", [[%{"x" => 0.0, "y" => 0.0}, nil], nil, []]},
      {"emb", [[1.0, 2.0, 3.0], nil, [0.5, nil, :infinity]]},
      {"attrs", [[{"a", 1}, {"b", nil}], nil, []]},
      {"sparse", [{3, 42}, {9, "x"}, {3, nil}]},
      {"dense", [{1, true}, {0, -7}, {1, nil}]},
      {"ree", ["a", "a", nil]},
      {"sv", ["short", nil, long]},
      {"bv", [<<0, 255>>, nil, long]},
      {"lv", [[1, 2], nil, [-3]]},
      {"llv", [[], nil, ["ü", nil]]},
      {"dict_list", [[1, 2], [1, 2], nil]},
      {"nested_dict", [%{"tag" => "on"}, %{"tag" => nil}, nil]}
    ]
  end

  # The values of columns/0 as they come back (inputs given in another form).
  def expected do
    Map.merge(Map.new(columns()), %{
      "dec32" => [Decimal.new(-1234, 2), nil, Decimal.new(700, 2)],
      "dec64" => [Decimal.new(5, -3), nil, Decimal.new(-123, -3)],
      "dec256" => [Decimal.new(10 ** 75, 0), nil, Decimal.new(-(10 ** 75), 0)],
      "t64" => [~T[23:59:59.999999], nil, ~T[00:00:00.000001]]
    })
  end

  # A stream of one Schema message that declares big-endian data, and no batches.
  def big_endian(_stream) do
    schema = [{0, :i16, 1}, {1, :tables, []}]

    meta =
      Bridge.Arrow.FlatBuffer.Writer.build([
        {0, :i16, 4},
        {1, :u8, 1},
        {2, :table, schema},
        {3, :i64, 0}
      ])

    <<0xFFFFFFFF::32, byte_size(meta)::little-32, meta::binary, 0xFFFFFFFF::32, 0::32>>
  end

  def table, do: Table.from_columns!(columns(), schema: schema())
end
