defmodule Bridge.Arrow.Builder do
  @moduledoc false
  # Elixir terms to an array of a given field's type. Every value is checked
  # against the type; a value that does not fit exactly (an integer out of
  # range, a non-UTF-8 string in a utf8 column, a timestamp finer than the
  # unit, a float that overflows the width) throws a :bad_call error naming the
  # column and row and saying what to do. Floats narrower than 64 bits are
  # rounded to the declared width, as NumPy and pyarrow do; :nan, :infinity and
  # :neg_infinity are accepted in float columns.

  import Bitwise
  import Bridge.Arrow.Errors, only: [fail_value: 2]

  alias Bridge.Arrow.{Array, Field, Type}

  @doc false
  @spec build([term()], Field.t(), String.t()) :: Array.t()
  def build(values, %Field{type: type, nullable: nullable}, at) do
    length = length(values)
    nulls = Enum.count(values, &is_nil/1)

    if nulls > 0 and not nullable,
      do:
        fail_value(:null_in_non_nullable,
          field: :value,
          value: nil,
          at: at,
          hint: "declare the field nullable or drop the nils"
        )

    validity = if nulls > 0, do: Array.pack_bits(Enum.map(values, &(&1 != nil))), else: nil
    array = %Array{type: type, length: length, null_count: nulls, validity: validity}
    fill(array, values, at)
  end

  defp fill(%Array{type: :null, length: n} = a, values, at) do
    check_all(values, at, &is_nil/1, "nil (a :null column holds only nils)")
    %{a | null_count: n, validity: nil}
  end

  defp fill(%Array{type: :bool} = a, values, at) do
    check_all(values, at, &(is_boolean(&1) or is_nil(&1)), "true, false or nil")
    %{a | data: Array.pack_bits(Enum.map(values, &(&1 == true)))}
  end

  defp fill(%Array{type: {s, w}} = a, values, at) when s in [:s, :u] do
    {min, max} = if s == :s, do: {-(1 <<< (w - 1)), (1 <<< (w - 1)) - 1}, else: {0, (1 <<< w) - 1}

    data =
      if Enum.all?(values, &(is_integer(&1) and &1 >= min and &1 <= max)),
        do: for(v <- values, into: <<>>, do: <<v::little-size(w)>>),
        else: checked_ints(values, a.type, w, {min, max}, at)

    %{a | data: data}
  end

  defp fill(%Array{type: {:f, w}} = a, values, at) do
    data =
      if w == 64 and Enum.all?(values, &is_float/1),
        do: for(v <- values, into: <<>>, do: <<v::float-little-64>>),
        else: for({v, i} <- Enum.with_index(values), into: <<>>, do: float_bits(v, w, at, i))

    %{a | data: data}
  end

  defp fill(%Array{type: t} = a, values, at)
       when t in [:utf8, :large_utf8, :binary, :large_binary] do
    utf8 = t in [:utf8, :large_utf8]
    w = Type.offset_width(t) * 8

    Enum.each(Enum.with_index(values), fn
      {nil, _} -> :ok
      {v, i} when not is_binary(v) -> wrong(v, "a binary", at, i)
      {v, i} -> if utf8 and not String.valid?(v), do: not_utf8(v, at, i)
    end)

    {offsets, _last} = offsets(values, &byte_size/1, w, t, at)
    %{a | offsets: offsets, data: IO.iodata_to_binary(Enum.reject(values, &is_nil/1))}
  end

  defp fill(%Array{type: :date32} = a, values, at) do
    %{
      a
      | data:
          for({v, i} <- Enum.with_index(values), into: <<>>, do: <<date(v, at, i)::little-32>>)
    }
  end

  defp fill(%Array{type: :date64} = a, values, at) do
    data =
      for {v, i} <- Enum.with_index(values), into: <<>> do
        ms = if is_integer(v), do: v, else: date(v, at, i) * 86_400_000
        <<ms::little-64>>
      end

    %{a | data: data}
  end

  defp fill(%Array{type: {:timestamp, unit, tz}} = a, values, at) do
    data =
      for {v, i} <- Enum.with_index(values), into: <<>> do
        <<timestamp(v, unit, tz, at, i)::little-64>>
      end

    %{a | data: data}
  end

  defp fill(%Array{type: {kind, child}} = a, values, at) when kind in [:list, :large_list] do
    Enum.each(Enum.with_index(values), fn
      {v, _} when is_list(v) or v == nil -> :ok
      {v, i} -> wrong(v, "a list", at, i)
    end)

    w = Type.offset_width(a.type) * 8
    {offsets, _last} = offsets(values, &length/1, w, a.type, at)
    items = values |> Enum.reject(&is_nil/1) |> Enum.concat()
    %{a | offsets: offsets, children: [build(items, child, at <> " (list items)")]}
  end

  defp fill(%Array{type: {:dictionary, {s, w} = index, value_type, _}} = a, values, at) do
    dict_values = values |> Enum.reject(&is_nil/1) |> Enum.uniq()
    positions = dict_values |> Enum.with_index() |> Map.new()
    max = if s == :s, do: (1 <<< (w - 1)) - 1, else: (1 <<< w) - 1

    if map_size(positions) - 1 > max,
      do: int_overflow(map_size(positions) - 1, index, at <> " (dictionary index)", nil)

    dictionary = build(dict_values, %Field{name: "", type: value_type}, at <> " (dictionary)")
    data = for v <- values, into: <<>>, do: <<Map.get(positions, v, 0)::little-size(w)>>
    %{a | data: data, dictionary: dictionary}
  end

  defp offsets(values, size_fun, w, type, at) do
    {offs, last} =
      Enum.map_reduce(values, 0, fn
        nil, acc -> {<<acc::little-size(w)>>, acc}
        v, acc -> {<<acc::little-size(w)>>, acc + size_fun.(v)}
      end)

    if last >= 1 <<< (w - 1),
      do:
        fail_value(:offset_overflow,
          field: :value,
          value: last,
          limit: (1 <<< (w - 1)) - 1,
          at: at,
          hint: "the column is too large for #{inspect(type)}; use the large_ variant"
        )

    {IO.iodata_to_binary([offs, <<last::little-size(w)>>]), last}
  end

  defp checked_ints(values, type, w, {min, max}, at) do
    for {v, i} <- Enum.with_index(values), into: <<>> do
      cond do
        is_integer(v) and v >= min and v <= max -> <<v::little-size(w)>>
        v == nil -> <<0::size(w)>>
        is_integer(v) -> int_overflow(v, type, at, i)
        true -> wrong(v, "an integer", at, i)
      end
    end
  end

  # ------------------------------------------------------------------- floats

  @specials %{
    16 => %{nan: 0x7E00, infinity: 0x7C00, neg_infinity: 0xFC00},
    32 => %{nan: 0x7FC00000, infinity: 0x7F800000, neg_infinity: 0xFF800000},
    64 => %{
      nan: 0x7FF8000000000000,
      infinity: 0x7FF0000000000000,
      neg_infinity: 0xFFF0000000000000
    }
  }

  defp float_bits(nil, w, _at, _i), do: <<0::size(w)>>

  defp float_bits(v, w, _at, _i) when v in [:nan, :infinity, :neg_infinity],
    do: <<@specials[w][v]::little-size(w)>>

  defp float_bits(v, w, at, i) when is_float(v) do
    bits = <<v::float-little-size(w)>>

    case bits do
      <<_::float-little-size(w)>> ->
        bits

      _ ->
        fail_value(:float_overflow,
          field: :value,
          value: v,
          at: row(at, i),
          hint: "#{v} is too large for a #{w}-bit float; declare {:f, 64}"
        )
    end
  end

  defp float_bits(v, w, at, i) when is_integer(v) do
    f = if abs(v) < 1 <<< 1023, do: v * 1.0, else: nil

    if f != nil and trunc(f) == v,
      do: float_bits(f, w, at, i),
      else:
        fail_value(:inexact_float,
          field: :value,
          value: v,
          at: row(at, i),
          hint: "the integer has no exact float value; declare an integer column"
        )
  end

  defp float_bits(v, _w, at, i), do: wrong(v, "a float, :nan, :infinity or :neg_infinity", at, i)

  # ------------------------------------------------------------------ temporal

  defp date(nil, _at, _i), do: 0
  defp date(v, _at, _i) when is_integer(v), do: v
  defp date(%Date{calendar: Calendar.ISO} = d, _at, _i), do: Date.to_gregorian_days(d) - 719_528
  defp date(v, at, i), do: wrong(v, "a Date (or days since 1970-01-01)", at, i)

  @per_us %{s: 1_000_000, ms: 1000, us: 1}

  defp timestamp(nil, _unit, _tz, _at, _i), do: 0
  defp timestamp(v, _unit, _tz, _at, _i) when is_integer(v), do: v

  defp timestamp(%NaiveDateTime{} = v, unit, nil, at, i) do
    v
    |> DateTime.from_naive!("Etc/UTC")
    |> DateTime.to_unix(:microsecond)
    |> to_unit(unit, v, at, i)
  end

  defp timestamp(%DateTime{} = v, unit, tz, at, i) when is_binary(tz) do
    v |> DateTime.to_unix(:microsecond) |> to_unit(unit, v, at, i)
  end

  defp timestamp(%NaiveDateTime{} = v, _unit, _tz, at, i),
    do: wrong(v, "a DateTime (the column has a time zone)", at, i)

  defp timestamp(%DateTime{} = v, _unit, nil, at, i),
    do: wrong(v, "a NaiveDateTime (the column has no time zone)", at, i)

  defp timestamp(v, _unit, _tz, at, i), do: wrong(v, "a DateTime or NaiveDateTime", at, i)

  defp to_unit(us, :ns, _v, _at, _i), do: us * 1000

  defp to_unit(us, unit, v, at, i) do
    per = @per_us[unit]

    if rem(us, per) == 0,
      do: div(us, per),
      else:
        fail_value(:inexact_temporal,
          field: :value,
          value: v,
          at: row(at, i),
          hint:
            "the value is finer than the column's unit #{inspect(unit)}; truncate it or use a finer unit"
        )
  end

  # -------------------------------------------------------------------- errors

  defp check_all(values, at, ok?, expected) do
    case Enum.find_index(values, &(not ok?.(&1))) do
      nil -> :ok
      i -> wrong(Enum.at(values, i), expected, at, i)
    end
  end

  defp row(at, nil), do: at
  defp row(at, i), do: "#{at} row #{i}"

  defp wrong(v, expected, at, i) do
    fail_value(:wrong_type, field: :value, value: v, limit: expected, at: row(at, i))
  end

  defp not_utf8(v, at, i) do
    fail_value(:invalid_utf8,
      field: :value,
      value: v,
      at: row(at, i),
      hint: "the column is utf8; declare it :binary for arbitrary bytes"
    )
  end

  defp int_overflow(v, type, at, i) do
    fail_value(:integer_overflow,
      field: :value,
      value: v,
      limit: inspect(type),
      at: row(at, i),
      hint: "declare a wider integer type"
    )
  end
end
