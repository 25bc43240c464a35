defmodule Bridge.Arrow.Metadata.Types do
  @moduledoc false
  # The `Type` union of Arrow's Schema.fbs to and from Bridge.Arrow.Type terms:
  # the union's type code, its table (slots numbered in declaration order) and
  # the field's children, which nested types take their child fields from.

  import Bridge.Arrow.Errors, only: [fail: 2]

  alias Bridge.Arrow.{Field, Type}
  alias Bridge.Arrow.FlatBuffer.Reader

  @names %{
    1 => :null,
    2 => :int,
    3 => :floating_point,
    4 => :binary,
    5 => :utf8,
    6 => :bool,
    7 => :decimal,
    8 => :date,
    9 => :time,
    10 => :timestamp,
    11 => :interval,
    12 => :list,
    13 => :struct,
    14 => :union,
    15 => :fixed_size_binary,
    16 => :fixed_size_list,
    17 => :map,
    18 => :duration,
    19 => :large_binary,
    20 => :large_utf8,
    21 => :large_list,
    22 => :run_end_encoded,
    23 => :binary_view,
    24 => :utf8_view,
    25 => :list_view,
    26 => :large_list_view
  }
  @codes Map.new(@names, fn {code, name} -> {name, code} end)

  # Types whose table has no fields and whose term is the union member's name.
  @plain [:null, :bool, :binary, :utf8, :large_binary, :large_utf8, :binary_view, :utf8_view]
  @one_child [:list, :large_list, :list_view, :large_list_view]

  # ------------------------------------------------------------------ reading

  @doc false
  @spec read(integer(), Reader.t() | nil, [Field.t()]) :: Type.t()
  def read(type_id, table, children) do
    name = Map.get(@names, type_id, {:unknown, type_id})

    if table == nil and type_id != 0,
      do: fail(:bad_flatbuffer, field: :type, value: name, limit: "a table")

    type = read_named(name, table, children)

    unless Type.valid?(type),
      do: fail(:unsupported_type, field: :type, value: type, limit: "a valid Arrow type")

    type
  end

  defp read_named(name, _t, children) when name in @plain, do: no_children(children, name)

  defp read_named(name, _t, children) when name in @one_child, do: {name, only_child(children)}

  defp read_named(:int, t, children), do: no_children(children, int(t))

  defp read_named(:floating_point, t, children) do
    case Reader.scalar(t, 0, :i16, 0, :precision) do
      p when p in 0..2 -> no_children(children, {:f, Enum.at([16, 32, 64], p)})
      p -> fail(:unsupported_type, field: :precision, value: p, limit: "0, 1 or 2")
    end
  end

  defp read_named(:decimal, t, children) do
    precision = Reader.scalar(t, 0, :i32, 0, :precision)
    scale = Reader.scalar(t, 1, :i32, 0, :scale)
    bits = Reader.scalar(t, 2, :i32, 128, :bit_width)

    if bits not in [32, 64, 128, 256],
      do: fail(:unsupported_type, field: :bit_width, value: bits, limit: "32, 64, 128 or 256")

    no_children(children, {:decimal, bits, precision, scale})
  end

  defp read_named(:date, t, children) do
    case Reader.scalar(t, 0, :i16, 1, :date_unit) do
      0 -> no_children(children, :date32)
      1 -> no_children(children, :date64)
      u -> fail(:unsupported_type, field: :date_unit, value: u, limit: "0 or 1")
    end
  end

  defp read_named(:time, t, children) do
    unit = unit(t, 1)

    case Reader.scalar(t, 1, :i32, 32, :bit_width) do
      32 when unit in [:s, :ms] -> no_children(children, {:time32, unit})
      64 when unit in [:us, :ns] -> no_children(children, {:time64, unit})
      w -> fail(:unsupported_type, field: :bit_width, value: {w, unit}, limit: "32 (s, ms) or 64")
    end
  end

  defp read_named(:timestamp, t, children) do
    tz =
      case Reader.string(t, 1, :timezone) do
        nil -> nil
        tz -> :binary.copy(utf8!(tz, :timezone))
      end

    no_children(children, {:timestamp, unit(t, 0), tz})
  end

  defp read_named(:duration, t, children), do: no_children(children, {:duration, unit(t, 1)})

  defp read_named(:interval, t, children) do
    case Reader.scalar(t, 0, :i16, 0, :interval_unit) do
      u when u in 0..2 -> no_children(children, {:interval, Enum.at(Type.interval_units(), u)})
      u -> fail(:unsupported_type, field: :interval_unit, value: u, limit: "0..2")
    end
  end

  defp read_named(:fixed_size_binary, t, children) do
    width = Reader.scalar(t, 0, :i32, 0, :byte_width)
    if width < 0, do: fail(:unsupported_type, field: :byte_width, value: width, limit: ">= 0")
    no_children(children, {:fixed_size_binary, width})
  end

  defp read_named(:fixed_size_list, t, children) do
    size = Reader.scalar(t, 0, :i32, 0, :list_size)
    if size < 0, do: fail(:unsupported_type, field: :list_size, value: size, limit: ">= 0")
    {:fixed_size_list, only_child(children), size}
  end

  defp read_named(:struct, _t, children), do: {:struct, children}

  defp read_named(:map, t, children) do
    case only_child(children) do
      %Field{type: {:struct, [_key, _value]}} = entries ->
        {:map, entries, Reader.scalar(t, 0, :bool, false, :keys_sorted)}

      other ->
        fail(:bad_children, field: :map_entries, value: other.type, limit: "struct<key, value>")
    end
  end

  defp read_named(:union, t, children) do
    mode =
      case Reader.scalar(t, 0, :i16, 0, :union_mode) do
        0 -> :sparse
        1 -> :dense
        m -> fail(:unsupported_type, field: :union_mode, value: m, limit: "0 or 1")
      end

    codes =
      case Reader.vector_bytes(t, 1, 4, :type_ids) do
        nil -> Enum.to_list(0..(length(children) - 1)//1)
        bin -> for <<c::little-signed-32 <- bin>>, do: c
      end

    if length(codes) != length(children) or Enum.any?(codes, &(&1 not in 0..127)) or
         length(Enum.uniq(codes)) != length(codes),
       do: fail(:bad_children, field: :type_ids, value: codes, limit: "one code 0..127 a child")

    {:union, mode, children, codes}
  end

  defp read_named(:run_end_encoded, _t, [run_ends, values]),
    do: {:run_end_encoded, run_ends, values}

  defp read_named(:run_end_encoded, _t, children),
    do: fail(:bad_children, field: :children, value: length(children), limit: 2)

  defp read_named(name, _t, _children), do: fail(:unsupported_type, field: :type, value: name)

  defp no_children([], type), do: type
  defp no_children(l, _), do: fail(:bad_children, field: :children, value: length(l), limit: 0)

  defp only_child([child]), do: child
  defp only_child(l), do: fail(:bad_children, field: :children, value: length(l), limit: 1)

  @doc false
  @spec int(Reader.t()) :: Type.int_type()
  def int(t) do
    width = Reader.scalar(t, 0, :i32, 0, :bit_width)
    signed = Reader.scalar(t, 1, :bool, false, :is_signed)

    if width not in [8, 16, 32, 64],
      do: fail(:unsupported_type, field: :bit_width, value: width, limit: "8, 16, 32 or 64")

    {if(signed, do: :s, else: :u), width}
  end

  defp unit(t, default) do
    case Reader.scalar(t, 0, :i16, default, :time_unit) do
      u when u in 0..3 -> Enum.at(Type.units(), u)
      u -> fail(:unsupported_type, field: :time_unit, value: u, limit: "0..3")
    end
  end

  @doc false
  @spec utf8!(binary(), atom()) :: binary()
  def utf8!(bin, field) do
    if String.valid?(bin), do: bin, else: fail(:bad_utf8, field: field, value: bin)
  end

  # ------------------------------------------------------------------ writing

  @doc false
  # {type code, type table fields, child fields} of a type (not a dictionary:
  # the field carries the dictionary encoding, the type is its value type).
  @spec write(Type.t()) :: {integer(), list(), [Field.t()]}
  def write(type) do
    {name, table} = table(type)
    {Map.fetch!(@codes, name), table, Type.children(type)}
  end

  @doc false
  @spec int_table(Type.int_type()) :: list()
  def int_table({s, w}), do: [{0, :i32, w}, {1, :bool, s == :s}]

  defp table(name) when name in @plain, do: {name, []}
  defp table({s, _} = t) when s in [:s, :u], do: {:int, int_table(t)}
  defp table({:f, w}), do: {:floating_point, [{0, :i16, %{16 => 0, 32 => 1, 64 => 2}[w]}]}

  defp table({:decimal, bits, p, s}),
    do: {:decimal, [{0, :i32, p}, {1, :i32, s}, {2, :i32, bits}]}

  defp table(:date32), do: {:date, [{0, :i16, 0}]}
  defp table(:date64), do: {:date, [{0, :i16, 1}]}
  defp table({:time32, unit}), do: {:time, [{0, :i16, unit_code(unit)}, {1, :i32, 32}]}
  defp table({:time64, unit}), do: {:time, [{0, :i16, unit_code(unit)}, {1, :i32, 64}]}

  defp table({:timestamp, unit, tz}) do
    tz = if tz == nil, do: [], else: [{1, :string, tz}]
    {:timestamp, [{0, :i16, unit_code(unit)} | tz]}
  end

  defp table({:duration, unit}), do: {:duration, [{0, :i16, unit_code(unit)}]}

  defp table({:interval, unit}),
    do: {:interval, [{0, :i16, Enum.find_index(Type.interval_units(), &(&1 == unit))}]}

  defp table({:fixed_size_binary, n}), do: {:fixed_size_binary, [{0, :i32, n}]}
  defp table({kind, %Field{}}) when kind in @one_child, do: {kind, []}
  defp table({:fixed_size_list, _, n}), do: {:fixed_size_list, [{0, :i32, n}]}
  defp table({:struct, _}), do: {:struct, []}
  defp table({:map, _, sorted}), do: {:map, [{0, :bool, sorted}]}

  defp table({:union, mode, _, codes}) do
    ids = {for(c <- codes, into: <<>>, do: <<c::little-signed-32>>), length(codes)}
    {:union, [{0, :i16, if(mode == :sparse, do: 0, else: 1)}, {1, :structs, ids}]}
  end

  defp table({:run_end_encoded, _, _}), do: {:run_end_encoded, []}

  defp unit_code(unit), do: Enum.find_index(Type.units(), &(&1 == unit))
end
