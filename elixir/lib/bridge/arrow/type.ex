defmodule Bridge.Arrow.Type do
  @moduledoc """
  Arrow data types as Elixir terms, and their physical layout.

  | type | Arrow | pyarrow |
  |---|---|---|
  | `:null` | Null | `pa.null()` |
  | `:bool` | Bool | `pa.bool_()` |
  | `{:s, 8}` `{:s, 16}` `{:s, 32}` `{:s, 64}` | Int signed | `pa.int8()` … `pa.int64()` |
  | `{:u, 8}` `{:u, 16}` `{:u, 32}` `{:u, 64}` | Int unsigned | `pa.uint8()` … `pa.uint64()` |
  | `{:f, 16}` `{:f, 32}` `{:f, 64}` | FloatingPoint | `pa.float16()` … `pa.float64()` |
  | `{:decimal, bits, precision, scale}`, bits 32, 64, 128 or 256 | Decimal | `pa.decimal32(p, s)` … `pa.decimal256(p, s)` |
  | `:utf8` `:large_utf8` `:utf8_view` | Utf8, LargeUtf8, Utf8View | `pa.string()`, `pa.large_string()`, `pa.string_view()` |
  | `:binary` `:large_binary` `:binary_view` | Binary, LargeBinary, BinaryView | `pa.binary()`, `pa.large_binary()`, `pa.binary_view()` |
  | `{:fixed_size_binary, n}` | FixedSizeBinary | `pa.binary(n)` |
  | `:date32` `:date64` | Date DAY, MILLISECOND | `pa.date32()`, `pa.date64()` |
  | `{:time32, :s \\| :ms}` `{:time64, :us \\| :ns}` | Time | `pa.time32(unit)`, `pa.time64(unit)` |
  | `{:timestamp, unit, tz}` | Timestamp, unit `:s` `:ms` `:us` `:ns`, tz a binary or `nil` | `pa.timestamp(unit, tz)` |
  | `{:duration, unit}` | Duration | `pa.duration(unit)` |
  | `{:interval, :year_month \\| :day_time \\| :month_day_nano}` | Interval | `pa.month_day_nano_interval()` (the others have no pyarrow constructor) |
  | `{:list, field}` `{:large_list, field}` | List, LargeList of a `Bridge.Arrow.Field` | `pa.list_(…)`, `pa.large_list(…)` |
  | `{:list_view, field}` `{:large_list_view, field}` | ListView, LargeListView | `pa.list_view(…)`, `pa.large_list_view(…)` |
  | `{:fixed_size_list, field, n}` | FixedSizeList | `pa.list_(field, n)` |
  | `{:struct, [field]}` | Struct | `pa.struct([…])` |
  | `{:map, entries, keys_sorted}` | Map; `entries` a non-nullable field of `{:struct, [key, value]}` (see `map/3`) | `pa.map_(k, v)` |
  | `{:union, :sparse \\| :dense, [field], [type_code]}` | Union | `pa.sparse_union(…)`, `pa.dense_union(…)` |
  | `{:run_end_encoded, run_ends, values}` | RunEndEncoded; `run_ends` a non-nullable field of `{:s, 16 \\| 32 \\| 64}` | `pa.run_end_encoded(…)` |
  | `{:dictionary, index, value, ordered}` | a dictionary-encoded field; `value` any type without dictionaries | `pa.dictionary(index, value, ordered)` |

  Integer and float types are spelled as Nx spells them, as in `Bridge.Tensor`.
  An extension type arrives as its storage type, its name and metadata in the
  field's metadata (`ARROW:extension:name`, `ARROW:extension:metadata`), and is
  written back the same way.

  ## Examples

      iex> Bridge.Arrow.Type.valid?({:timestamp, :ms, "UTC"})
      true
      iex> Bridge.Arrow.Type.valid?({:s, 128})
      false
      iex> Bridge.Arrow.Type.byte_width({:u, 16})
      2
      iex> Bridge.Arrow.Type.describe(Bridge.Arrow.Type.map(:utf8, {:s, 64}))
      "map<string, int64>"
  """

  import Bitwise, only: [<<<: 2]

  alias Bridge.Arrow.Field

  @type unit :: :s | :ms | :us | :ns
  @type int_type :: {:s, 8 | 16 | 32 | 64} | {:u, 8 | 16 | 32 | 64}
  @type t ::
          :null
          | :bool
          | int_type()
          | {:f, 16 | 32 | 64}
          | {:decimal, 32 | 64 | 128 | 256, pos_integer(), integer()}
          | :utf8
          | :large_utf8
          | :utf8_view
          | :binary
          | :large_binary
          | :binary_view
          | {:fixed_size_binary, non_neg_integer()}
          | :date32
          | :date64
          | {:time32, :s | :ms}
          | {:time64, :us | :ns}
          | {:timestamp, unit(), String.t() | nil}
          | {:duration, unit()}
          | {:interval, :year_month | :day_time | :month_day_nano}
          | {:list | :large_list | :list_view | :large_list_view, Field.t()}
          | {:fixed_size_list, Field.t(), non_neg_integer()}
          | {:struct, [Field.t()]}
          | {:map, Field.t(), boolean()}
          | {:union, :sparse | :dense, [Field.t()], [0..127]}
          | {:run_end_encoded, Field.t(), Field.t()}
          | {:dictionary, int_type(), t(), boolean()}

  @typedoc "How an array of the type is laid out in buffers."
  @type layout ::
          :null
          | :bitmap
          | :fixed
          | :var
          | :view
          | :list
          | :list_view
          | :fixed_list
          | :struct
          | :union
          | :run_end_encoded
          | :dictionary

  @units [:s, :ms, :us, :ns]
  @intervals [:year_month, :day_time, :month_day_nano]
  @var [:utf8, :large_utf8, :binary, :large_binary]
  @lists [:list, :large_list, :list_view, :large_list_view]
  @max_precision %{32 => 9, 64 => 18, 128 => 38, 256 => 76}

  @doc "The time units, in Arrow's order."
  @spec units() :: [unit()]
  def units, do: @units

  @doc "The interval units, in Arrow's order."
  @spec interval_units() :: [atom()]
  def interval_units, do: @intervals

  @doc "The largest precision of a decimal of `bits` bits."
  @spec max_precision(32 | 64 | 128 | 256) :: pos_integer()
  def max_precision(bits), do: Map.fetch!(@max_precision, bits)

  @doc """
  The map type of `key` and `value` types, with Arrow's usual field names
  (`entries`, `key`, `value`).

  ## Examples

      iex> {:map, entries, false} = Bridge.Arrow.Type.map(:utf8, {:s, 32})
      iex> {entries.name, entries.nullable}
      {"entries", false}
  """
  @spec map(t(), t(), boolean()) :: t()
  def map(key, value, keys_sorted \\ false) do
    entries = {:struct, [Field.new("key", key, nullable: false), Field.new("value", value)]}

    {:map, Field.new("entries", entries, nullable: false), keys_sorted}
  end

  @doc """
  Whether `type` is a type Bridge.Arrow handles. Dictionary values must not
  themselves hold dictionaries.
  """
  @spec valid?(term()) :: boolean()
  def valid?(:null), do: true
  def valid?(:bool), do: true
  def valid?({:f, w}) when w in [16, 32, 64], do: true
  def valid?(t) when t in @var or t in [:utf8_view, :binary_view, :date32, :date64], do: true
  def valid?({:timestamp, u, tz}) when u in @units and (is_nil(tz) or is_binary(tz)), do: true
  def valid?({:time32, u}) when u in [:s, :ms], do: true
  def valid?({:time64, u}) when u in [:us, :ns], do: true
  def valid?({:duration, u}) when u in @units, do: true
  def valid?({:interval, u}) when u in @intervals, do: true

  def valid?({:fixed_size_binary, n}) when is_integer(n) and n >= 0 and n < 1 <<< 31,
    do: true

  def valid?({:decimal, bits, p, s})
      when bits in [32, 64, 128, 256] and is_integer(p) and is_integer(s),
      do: p >= 1 and p <= @max_precision[bits] and s >= -(1 <<< 31) and s < 1 <<< 31

  def valid?({kind, f}) when kind in @lists, do: field?(f)

  def valid?({:fixed_size_list, f, n}) when is_integer(n) and n >= 0 and n < 1 <<< 31,
    do: field?(f)

  def valid?({:struct, fields}) when is_list(fields), do: Enum.all?(fields, &field?/1)

  def valid?({:map, %Field{type: {:struct, [key, value]}} = entries, sorted})
      when is_boolean(sorted),
      do: field?(entries) and field?(key) and field?(value)

  def valid?({:union, mode, fields, codes})
      when mode in [:sparse, :dense] and is_list(fields) and is_list(codes) do
    length(fields) == length(codes) and length(fields) <= 128 and
      Enum.all?(codes, &(is_integer(&1) and &1 in 0..127)) and
      length(Enum.uniq(codes)) == length(codes) and Enum.all?(fields, &field?/1)
  end

  def valid?({:run_end_encoded, %Field{type: ends} = run_ends, values}) do
    ends in [{:s, 16}, {:s, 32}, {:s, 64}] and field?(run_ends) and
      field?(values)
  end

  def valid?({:dictionary, index, value, ordered}) when is_boolean(ordered) do
    integer?(index) and valid?(value) and not dictionary?(value)
  end

  def valid?(type), do: integer?(type)

  defp field?(%Field{name: name, type: type, nullable: n}) when is_binary(name) and is_boolean(n),
    do: valid?(type)

  defp field?(_), do: false

  @doc "Whether `type` is an integer type."
  @spec integer?(term()) :: boolean()
  def integer?({s, w}) when s in [:s, :u] and w in [8, 16, 32, 64], do: true
  def integer?(_), do: false

  @doc "Whether `type` is, or holds somewhere inside it, a dictionary type."
  @spec dictionary?(t()) :: boolean()
  def dictionary?({:dictionary, _, _, _}), do: true
  def dictionary?(type), do: Enum.any?(children(type), &dictionary?(&1.type))

  @doc """
  The child fields of a nested type, in the order their arrays follow the
  parent's in a record batch; `[]` for other types (a dictionary's values are
  not children: they travel in dictionary batches).
  """
  @spec children(t()) :: [Field.t()]
  def children({kind, %Field{} = f}) when kind in @lists, do: [f]
  def children({:fixed_size_list, f, _}), do: [f]
  def children({:struct, fields}), do: fields
  def children({:map, entries, _}), do: [entries]
  def children({:union, _, fields, _}), do: fields
  def children({:run_end_encoded, run_ends, values}), do: [run_ends, values]
  def children(_), do: []

  @doc "The buffer layout of a type."
  @spec layout(t()) :: layout()
  def layout(:null), do: :null
  def layout(:bool), do: :bitmap
  def layout(t) when t in @var, do: :var
  def layout(t) when t in [:utf8_view, :binary_view], do: :view
  def layout({kind, _}) when kind in [:list, :large_list], do: :list
  def layout({:map, _, _}), do: :list
  def layout({kind, _}) when kind in [:list_view, :large_list_view], do: :list_view
  def layout({:fixed_size_list, _, _}), do: :fixed_list
  def layout({:struct, _}), do: :struct
  def layout({:union, _, _, _}), do: :union
  def layout({:run_end_encoded, _, _}), do: :run_end_encoded
  def layout({:dictionary, _, _, _}), do: :dictionary
  def layout(_fixed), do: :fixed

  @doc "The size in bytes of one value of a fixed-width type (of an index for a dictionary)."
  @spec byte_width(t()) :: non_neg_integer()
  def byte_width({s, w}) when s in [:s, :u, :f], do: div(w, 8)
  def byte_width(:date32), do: 4
  def byte_width(:date64), do: 8
  def byte_width({:timestamp, _, _}), do: 8
  def byte_width({:time32, _}), do: 4
  def byte_width({:time64, _}), do: 8
  def byte_width({:duration, _}), do: 8
  def byte_width({:interval, :year_month}), do: 4
  def byte_width({:interval, :day_time}), do: 8
  def byte_width({:interval, :month_day_nano}), do: 16
  def byte_width({:decimal, bits, _, _}), do: div(bits, 8)
  def byte_width({:fixed_size_binary, n}), do: n
  def byte_width({:dictionary, index, _, _}), do: byte_width(index)

  @doc "The size in bytes of one offset of a variable-size, list or list-view type."
  @spec offset_width(t()) :: 4 | 8
  def offset_width(t) when t in [:utf8, :binary], do: 4
  def offset_width(t) when t in [:large_utf8, :large_binary], do: 8
  def offset_width({kind, _}) when kind in [:list, :list_view], do: 4
  def offset_width({kind, _}) when kind in [:large_list, :large_list_view], do: 8
  def offset_width({:map, _, _}), do: 4

  @doc "Whether strings of the type are UTF-8 (and checked as such)."
  @spec utf8?(t()) :: boolean()
  def utf8?(t), do: t in [:utf8, :large_utf8, :utf8_view]

  @doc "The child field of a list-like type, or nil."
  @spec child(t()) :: Field.t() | nil
  def child({kind, %Field{} = f}) when kind in @lists, do: f
  def child({:fixed_size_list, f, _}), do: f
  def child({:map, f, _}), do: f
  def child(_), do: nil

  @doc """
  A short name for a type, as pyarrow prints it.

  ## Examples

      iex> Bridge.Arrow.Type.describe({:list, Bridge.Arrow.Field.new("item", {:u, 8})})
      "list<item: uint8>"
      iex> Bridge.Arrow.Type.describe({:timestamp, :ns, "UTC"})
      "timestamp[ns, tz=UTC]"
      iex> Bridge.Arrow.Type.describe({:decimal, 128, 10, 2})
      "decimal128(10, 2)"
  """
  @spec describe(t()) :: String.t()
  def describe({:s, w}), do: "int#{w}"
  def describe({:u, w}), do: "uint#{w}"
  def describe({:f, 16}), do: "halffloat"
  def describe({:f, 32}), do: "float"
  def describe({:f, 64}), do: "double"
  def describe(:utf8), do: "string"
  def describe(:large_utf8), do: "large_string"
  def describe(:utf8_view), do: "string_view"
  def describe(:date32), do: "date32[day]"
  def describe(:date64), do: "date64[ms]"
  def describe({:timestamp, unit, nil}), do: "timestamp[#{unit}]"
  def describe({:timestamp, unit, tz}), do: "timestamp[#{unit}, tz=#{tz}]"
  def describe({kind, unit}) when kind in [:time32, :time64, :duration], do: "#{kind}[#{unit}]"
  def describe({:interval, :month_day_nano}), do: "month_day_nano_interval"
  def describe({:interval, unit}), do: "interval[#{unit}]"
  def describe({:decimal, bits, p, s}), do: "decimal#{bits}(#{p}, #{s})"
  def describe({:fixed_size_binary, n}), do: "fixed_size_binary[#{n}]"

  def describe({kind, %Field{name: name, type: type}}) when kind in @lists,
    do: "#{kind}<#{name}: #{describe(type)}>"

  def describe({:fixed_size_list, %Field{name: name, type: type}, n}),
    do: "fixed_size_list<#{name}: #{describe(type)}>[#{n}]"

  def describe({:struct, fields}), do: "struct<#{describe_fields(fields)}>"

  def describe({:map, %Field{type: {:struct, [k, v]}}, sorted}),
    do: "map<#{describe(k.type)}, #{describe(v.type)}#{if sorted, do: ", keys_sorted"}>"

  def describe({:union, mode, fields, _}), do: "#{mode}_union<#{describe_fields(fields)}>"

  def describe({:run_end_encoded, e, v}),
    do: "run_end_encoded<run_ends: #{describe(e.type)}, values: #{describe(v.type)}>"

  def describe({:dictionary, index, value, ordered}),
    do: "dictionary<values=#{describe(value)}, indices=#{describe(index)}, ordered=#{ordered}>"

  def describe(type) when is_atom(type), do: Atom.to_string(type)
  def describe(other), do: inspect(other)

  defp describe_fields(fields),
    do: Enum.map_join(fields, ", ", &"#{&1.name}: #{describe(&1.type)}")
end
