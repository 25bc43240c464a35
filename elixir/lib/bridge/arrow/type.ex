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
  | `:utf8` `:large_utf8` | Utf8, LargeUtf8 | `pa.string()`, `pa.large_string()` |
  | `:binary` `:large_binary` | Binary, LargeBinary | `pa.binary()`, `pa.large_binary()` |
  | `:date32` `:date64` | Date DAY, MILLISECOND | `pa.date32()`, `pa.date64()` |
  | `{:timestamp, unit, tz}` | Timestamp, unit `:s` `:ms` `:us` `:ns`, tz a binary or `nil` | `pa.timestamp(unit, tz)` |
  | `{:list, field}` `{:large_list, field}` | List, LargeList of a `Bridge.Arrow.Field` | `pa.list_(…)`, `pa.large_list(…)` |
  | `{:dictionary, index, value, ordered}` | a dictionary-encoded field | `pa.dictionary(index, value, ordered)` |

  Integer and float types are spelled as Nx spells them, as in `Bridge.Tensor`.

  ## Examples

      iex> Bridge.Arrow.Type.valid?({:timestamp, :ms, "UTC"})
      true
      iex> Bridge.Arrow.Type.valid?({:s, 128})
      false
      iex> Bridge.Arrow.Type.byte_width({:u, 16})
      2
  """

  alias Bridge.Arrow.Field

  @type unit :: :s | :ms | :us | :ns
  @type int_type :: {:s, 8 | 16 | 32 | 64} | {:u, 8 | 16 | 32 | 64}
  @type t ::
          :null
          | :bool
          | int_type()
          | {:f, 16 | 32 | 64}
          | :utf8
          | :large_utf8
          | :binary
          | :large_binary
          | :date32
          | :date64
          | {:timestamp, unit(), String.t() | nil}
          | {:list, Field.t()}
          | {:large_list, Field.t()}
          | {:dictionary, int_type(), t(), boolean()}

  @typedoc "How an array of the type is laid out in buffers."
  @type layout :: :null | :bitmap | :fixed | :var | :list | :dictionary

  @units [:s, :ms, :us, :ns]

  @doc "The time units, in Arrow's order."
  @spec units() :: [unit()]
  def units, do: @units

  @doc """
  Whether `type` is a type Bridge.Arrow handles. Dictionary values must not
  themselves be dictionaries.
  """
  @spec valid?(term()) :: boolean()
  def valid?(:null), do: true
  def valid?(:bool), do: true
  def valid?({:f, w}) when w in [16, 32, 64], do: true
  def valid?(t) when t in [:utf8, :large_utf8, :binary, :large_binary, :date32, :date64], do: true
  def valid?({:timestamp, u, tz}) when u in @units and (is_nil(tz) or is_binary(tz)), do: true

  def valid?({kind, %Field{name: name, type: type, nullable: n}})
      when kind in [:list, :large_list] and is_binary(name) and is_boolean(n),
      do: valid?(type)

  def valid?({:dictionary, index, value, ordered}) when is_boolean(ordered) do
    integer?(index) and valid?(value) and not dictionary?(value)
  end

  def valid?(type), do: integer?(type)

  @doc "Whether `type` is an integer type."
  @spec integer?(term()) :: boolean()
  def integer?({s, w}) when s in [:s, :u] and w in [8, 16, 32, 64], do: true
  def integer?(_), do: false

  defp dictionary?({:dictionary, _, _, _}), do: true
  defp dictionary?({kind, %Field{type: t}}) when kind in [:list, :large_list], do: dictionary?(t)
  defp dictionary?(_), do: false

  @doc "The buffer layout of a type."
  @spec layout(t()) :: layout()
  def layout(:null), do: :null
  def layout(:bool), do: :bitmap
  def layout(t) when t in [:utf8, :large_utf8, :binary, :large_binary], do: :var
  def layout({kind, _}) when kind in [:list, :large_list], do: :list
  def layout({:dictionary, _, _, _}), do: :dictionary
  def layout(_fixed), do: :fixed

  @doc "The size in bytes of one value of a fixed-width type (of an index for a dictionary)."
  @spec byte_width(t()) :: pos_integer()
  def byte_width({s, w}) when s in [:s, :u, :f], do: div(w, 8)
  def byte_width(:date32), do: 4
  def byte_width(:date64), do: 8
  def byte_width({:timestamp, _, _}), do: 8
  def byte_width({:dictionary, index, _, _}), do: byte_width(index)

  @doc "The size in bytes of one offset of a variable-size or list type."
  @spec offset_width(t()) :: 4 | 8
  def offset_width(t) when t in [:utf8, :binary], do: 4
  def offset_width(t) when t in [:large_utf8, :large_binary], do: 8
  def offset_width({:list, _}), do: 4
  def offset_width({:large_list, _}), do: 8

  @doc "The child field of a list type, or nil."
  @spec child(t()) :: Field.t() | nil
  def child({kind, %Field{} = f}) when kind in [:list, :large_list], do: f
  def child(_), do: nil

  @doc """
  A short name for a type, as pyarrow prints it.

  ## Examples

      iex> Bridge.Arrow.Type.describe({:list, Bridge.Arrow.Field.new("item", {:u, 8})})
      "list<item: uint8>"
      iex> Bridge.Arrow.Type.describe({:timestamp, :ns, "UTC"})
      "timestamp[ns, tz=UTC]"
  """
  @spec describe(t()) :: String.t()
  def describe({:s, w}), do: "int#{w}"
  def describe({:u, w}), do: "uint#{w}"
  def describe({:f, 16}), do: "halffloat"
  def describe({:f, 32}), do: "float"
  def describe({:f, 64}), do: "double"
  def describe(:utf8), do: "string"
  def describe(:large_utf8), do: "large_string"
  def describe(:date32), do: "date32[day]"
  def describe(:date64), do: "date64[ms]"
  def describe({:timestamp, unit, nil}), do: "timestamp[#{unit}]"
  def describe({:timestamp, unit, tz}), do: "timestamp[#{unit}, tz=#{tz}]"

  def describe({kind, %Field{name: name, type: type}}) when kind in [:list, :large_list],
    do: "#{kind}<#{name}: #{describe(type)}>"

  def describe({:dictionary, index, value, ordered}),
    do: "dictionary<values=#{describe(value)}, indices=#{describe(index)}, ordered=#{ordered}>"

  def describe(type) when is_atom(type), do: Atom.to_string(type)
  def describe(other), do: inspect(other)
end
