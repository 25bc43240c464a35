defmodule Bridge.Arrow.Infer do
  @moduledoc false
  # The Arrow type of a column of Elixir terms, for Bridge.Table.from_rows and
  # from_columns without a declared type:
  #
  #   integers -> {:s, 64}      floats -> {:f, 64}       booleans -> :bool
  #   UTF-8 binaries -> :utf8   any non-UTF-8 binary in the column -> :binary
  #   Date -> :date32           NaiveDateTime -> {:timestamp, :us, nil}
  #   DateTime -> {:timestamp, :us, zone} ("Etc/UTC" is written "UTC")
  #   lists -> {:list, item}    all nil (or empty) -> :null
  #   maps with the same atom or string keys -> {:struct, fields} (sorted by key)
  #
  # Anything ambiguous or lossy is an error that says what to declare instead:
  # integers beyond int64, integers mixed with floats, different kinds in one
  # column, DateTimes in different zones, atoms (:nan included), tuples, maps
  # with other keys or differing key sets, and structs without an Arrow type.

  import Bitwise
  import Bridge.Arrow.Errors, only: [fail_value: 2]

  alias Bridge.Arrow.{Field, Type}

  @doc false
  @spec infer([term()], String.t()) :: Type.t()
  def infer(values, at) do
    {kinds, min, max} =
      Enum.reduce(values, {%{}, 0, 0}, fn v, {kinds, min, max} ->
        case kind(v, at) do
          nil -> {kinds, min, max}
          :int -> {Map.put_new(kinds, :int, v), min(min, v), max(max, v)}
          k -> {Map.put_new(kinds, k, v), min, max}
        end
      end)

    case Map.keys(kinds) do
      [] ->
        :null

      [:int] ->
        int_type(min, max, at)

      [:float] ->
        {:f, 64}

      [:bool] ->
        :bool

      [:utf8] ->
        :utf8

      [:binary, :utf8] ->
        :binary

      [:binary] ->
        :binary

      [:date] ->
        :date32

      [:naive] ->
        {:timestamp, :us, nil}

      [{:datetime, zone}] ->
        {:timestamp, :us, arrow_zone(zone)}

      [{:struct, keys}] ->
        maps = Enum.reject(values, &is_nil/1)

        {:struct,
         for k <- keys do
           name = to_string(k)

           Field.new(
             name,
             infer(Enum.map(maps, &Map.fetch!(&1, k)), at <> " (field #{inspect(name)})")
           )
         end}

      [:list] ->
        {:list,
         Field.new(
           "item",
           infer(Enum.concat(Enum.reject(values, &is_nil/1)), at <> " (list items)")
         )}

      ks ->
        mixed(ks, kinds, at)
    end
  end

  defp arrow_zone("Etc/UTC"), do: "UTC"
  defp arrow_zone(zone), do: zone

  defp kind(nil, _at), do: nil
  defp kind(v, _at) when is_boolean(v), do: :bool
  defp kind(v, _at) when is_integer(v), do: :int
  defp kind(v, _at) when is_float(v), do: :float
  defp kind(v, _at) when is_binary(v), do: if(String.valid?(v), do: :utf8, else: :binary)
  defp kind(v, _at) when is_list(v), do: :list
  defp kind(%Date{calendar: Calendar.ISO}, _at), do: :date
  defp kind(%NaiveDateTime{calendar: Calendar.ISO}, _at), do: :naive
  defp kind(%DateTime{calendar: Calendar.ISO, time_zone: zone}, _at), do: {:datetime, zone}

  defp kind(v, at) when v in [:nan, :infinity, :neg_infinity] do
    unsupported(
      v,
      at,
      "a float column with #{inspect(v)} must be declared, e.g. schema: [x: {:f, 64}]"
    )
  end

  defp kind(v, at) when is_atom(v),
    do:
      unsupported(
        v,
        at,
        "atoms have no Arrow type; convert them to strings with Atom.to_string/1"
      )

  defp kind(v, at) when is_tuple(v),
    do:
      unsupported(
        v,
        at,
        "tuples have no Arrow type here; convert them to lists or split them into columns"
      )

  defp kind(%{__struct__: s} = v, at),
    do:
      unsupported(v, at, "#{inspect(s)} has no Arrow type here; convert it to a supported value")

  defp kind(v, at) when is_map(v) do
    keys = v |> Map.keys() |> Enum.sort()

    unless Enum.all?(
             keys,
             &((is_binary(&1) and String.valid?(&1)) or
                 (is_atom(&1) and not is_boolean(&1) and &1 != nil))
           ),
           do:
             unsupported(
               v,
               at,
               "maps become struct columns only with atom or UTF-8 string keys; for other keys declare " <>
                 "a map column, e.g. schema: [x: Bridge.Arrow.Type.map({:s, 64}, :utf8)]"
             )

    names = Enum.map(keys, &to_string/1)

    if length(Enum.uniq(names)) != length(names),
      do: unsupported(v, at, "the map has a key as an atom and as a string; keep one of them")

    {:struct, keys}
  end

  defp kind(v, at), do: unsupported(v, at, "convert it to a supported value")

  defp int_type(min, max, at) do
    cond do
      min >= -(1 <<< 63) and max < 1 <<< 63 ->
        {:s, 64}

      min >= 0 and max < 1 <<< 64 ->
        overflow(max, at, "declare the column {:u, 64}")

      true ->
        v = if min < -(1 <<< 63), do: min, else: max
        overflow(v, at, "no Arrow integer type holds it; convert the column to strings or floats")
    end
  end

  defp overflow(v, at, hint) do
    fail_value(:integer_overflow, field: :value, value: v, limit: "int64", at: at, hint: hint)
  end

  defp mixed(ks, examples, at) do
    hint =
      cond do
        Enum.sort(ks) == [:float, :int] ->
          "write the integers as floats (1.0) or declare the column {:f, 64}"

        Enum.all?(ks, &match?({:datetime, _}, &1)) ->
          "DateTimes in one column share a time zone; shift them with DateTime.shift_zone/2"

        Enum.all?(ks, &match?({:struct, _}, &1)) ->
          "maps in one column need the same keys (they become a struct column): put nil " <>
            "where a value is missing, or declare the column's type"

        true ->
          "a column holds one kind of value; convert the values or split the column"
      end

    reason =
      if Enum.all?(ks, &match?({:struct, _}, &1)), do: :inconsistent_keys, else: :mixed_types

    fail_value(reason,
      field: :value,
      value: Enum.map(ks, &Map.fetch!(examples, &1)),
      at: at,
      hint: hint
    )
  end

  defp unsupported(v, at, hint) do
    fail_value(:unsupported_value, field: :value, value: v, at: at, hint: hint)
  end
end
