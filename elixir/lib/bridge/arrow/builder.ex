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

  alias Bridge.Arrow.{Array, Decimal, Field, Type}
  alias Bridge.Arrow.Builder.{Nested, Temporal}

  @doc false
  @spec build([term()], Field.t(), String.t()) :: Array.t()
  def build(values, %Field{type: type, nullable: nullable}, at) do
    length = length(values)
    nulls = Enum.count(values, &is_nil/1)

    # A nil that the field's type keeps as a value (see null_value?/1) is
    # not a null slot of a non-nullable field.
    in_values = nulls > 0 and not nullable and null_value?(type)
    nulls = if in_values, do: 0, else: nulls

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

  @doc false
  # Whether a column of `type` holds a nil as a value rather than as a null
  # slot of its own: a dictionary as a null among its dictionary's values (it
  # is indexed like any value), a run-end encoded array as a null run value
  # when its values field is nullable (it has no validity of its own). Arrow
  # allows both in a non-nullable field, and pyarrow writes them.
  @spec null_value?(Type.t()) :: boolean()
  def null_value?({:dictionary, _, _, _}), do: true
  def null_value?({:run_end_encoded, _, %Field{nullable: nullable}}), do: nullable
  def null_value?(_type), do: false

  defp fill(%Array{type: type} = a, values, at)
       when (is_tuple(type) and
               elem(type, 0) in [
                 :struct,
                 :map,
                 :fixed_size_list,
                 :list_view,
                 :large_list_view,
                 :union,
                 :run_end_encoded
               ]) or type in [:utf8_view, :binary_view],
       do: Nested.fill(a, values, at)

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
          for(
            {v, i} <- Enum.with_index(values),
            into: <<>>,
            do: <<Temporal.stored(Temporal.date(v, at, i), 32, v, at, i)::little-32>>
          )
    }
  end

  defp fill(%Array{type: :date64} = a, values, at) do
    data =
      for {v, i} <- Enum.with_index(values), into: <<>> do
        ms = if is_integer(v), do: v, else: Temporal.date(v, at, i) * 86_400_000
        <<Temporal.stored(ms, 64, v, at, i)::little-64>>
      end

    %{a | data: data}
  end

  defp fill(%Array{type: {:timestamp, unit, tz}} = a, values, at) do
    data =
      for {v, i} <- Enum.with_index(values), into: <<>> do
        <<Temporal.stored(Temporal.timestamp(v, unit, tz, at, i), 64, v, at, i)::little-64>>
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
    dict_values = if a.null_count > 0, do: Enum.reject(values, &is_nil/1), else: values
    dict_values = Enum.uniq(dict_values)
    positions = dict_values |> Enum.with_index() |> Map.new()
    max = if s == :s, do: (1 <<< (w - 1)) - 1, else: (1 <<< w) - 1

    if map_size(positions) - 1 > max,
      do: int_overflow(map_size(positions) - 1, index, at <> " (dictionary index)", nil)

    dictionary = build(dict_values, %Field{name: "", type: value_type}, at <> " (dictionary)")
    data = for v <- values, into: <<>>, do: <<Map.get(positions, v, 0)::little-size(w)>>
    %{a | data: data, dictionary: dictionary}
  end

  defp fill(%Array{type: {:decimal, bits, precision, scale}} = a, values, at) do
    limit = Decimal.pow10(precision)

    data =
      for {v, i} <- Enum.with_index(values), into: <<>> do
        c = decimal(v, scale, at, i)

        if abs(c) >= limit,
          do:
            fail_value(:decimal_overflow,
              field: :value,
              value: v,
              limit: "#{precision} digits",
              at: row(at, i),
              hint: "declare a larger precision"
            )

        <<c::little-signed-size(bits)>>
      end

    %{a | data: data}
  end

  defp fill(%Array{type: {:fixed_size_binary, w}} = a, values, at) do
    data =
      for {v, i} <- Enum.with_index(values), into: <<>> do
        case v do
          nil -> <<0::size(w * 8)>>
          <<_::binary-size(w)>> -> v
          _ -> wrong(v, "a binary of #{w} bytes", at, i)
        end
      end

    %{a | data: data}
  end

  defp fill(%Array{type: {time, unit} = t} = a, values, at) when time in [:time32, :time64] do
    w = Type.byte_width(t) * 8
    per = %{s: 1, ms: 1000, us: 1_000_000, ns: 1_000_000_000}[unit]

    data =
      for {v, i} <- Enum.with_index(values), into: <<>> do
        <<Temporal.time_of_day(v, per, at, i)::little-signed-size(w)>>
      end

    %{a | data: data}
  end

  defp fill(%Array{type: {:duration, _}} = a, values, at),
    do: %{a | data: ints(values, 64, at, "an integer (a count of the column's unit)")}

  defp fill(%Array{type: {:interval, :year_month}} = a, values, at),
    do: %{a | data: ints(values, 32, at, "an integer number of months")}

  defp fill(%Array{type: {:interval, unit}} = a, values, at) do
    {widths, expected} =
      case unit do
        :day_time -> {[32, 32], "{days, milliseconds}"}
        :month_day_nano -> {[32, 32, 64], "{months, days, nanoseconds}"}
      end

    data =
      for {v, i} <- Enum.with_index(values), into: <<>> do
        parts = if v == nil, do: Enum.map(widths, fn _ -> 0 end), else: tuple_parts(v, widths)

        if parts == nil or
             not Enum.all?(Enum.zip(parts, widths), fn {x, w} -> fits?(x, w) end),
           do: wrong(v, expected <> " of 32-bit (nanoseconds 64-bit) integers", at, i)

        for {x, w} <- Enum.zip(parts, widths), into: <<>>, do: <<x::little-signed-size(w)>>
      end

    %{a | data: data}
  end

  @doc false
  # The offsets of variable-size values (nil for a null slot), `size_fun`
  # giving each value's size: {offsets binary, the last offset}.
  @spec offsets([term()], (term() -> non_neg_integer()), 32 | 64, Type.t(), String.t()) ::
          {binary(), non_neg_integer()}
  def offsets(values, size_fun, w, type, at) do
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

  defp ints(values, w, at, expected) do
    for {v, i} <- Enum.with_index(values), into: <<>> do
      cond do
        v == nil -> <<0::size(w)>>
        fits?(v, w) -> <<v::little-signed-size(w)>>
        is_integer(v) -> int_overflow(v, {:s, w}, at, i)
        true -> wrong(v, expected, at, i)
      end
    end
  end

  @doc false
  def fits?(v, w), do: is_integer(v) and v >= -(1 <<< (w - 1)) and v < 1 <<< (w - 1)

  defp tuple_parts(v, widths) when is_tuple(v) and tuple_size(v) == length(widths),
    do: Tuple.to_list(v)

  defp tuple_parts(_v, _widths), do: nil

  defp decimal(nil, _scale, _at, _i), do: 0
  defp decimal(v, scale, at, i) when is_integer(v), do: decimal(Decimal.new(v, 0), scale, at, i)

  defp decimal(%{__struct__: name, sign: sign, coef: coef, exp: exp} = v, scale, at, i)
       when name == Elixir.Decimal and is_integer(coef) and is_integer(exp) do
    decimal_in(Decimal.new(sign * coef, -exp), v, scale, at, i)
  end

  defp decimal(%Decimal{} = d, scale, at, i), do: decimal_in(d, d, scale, at, i)

  defp decimal(v, _scale, at, i),
    do: wrong(v, "a Bridge.Arrow.Decimal, a Decimal or an integer", at, i)

  # No 256-bit decimal has 77 digits: a value 77 or more scale steps away is
  # refused before 10^difference is computed (it is 0, overflows or is inexact).
  defp decimal_in(%Decimal{coefficient: 0}, _v, _scale, _at, _i), do: 0

  defp decimal_in(%Decimal{scale: s}, v, scale, at, i) when abs(scale - s) > 76 do
    fail_value(:decimal_overflow,
      field: :value,
      value: v,
      limit: "scale #{scale}",
      at: row(at, i),
      hint: "the value is 77 or more digits away from the column's scale"
    )
  end

  defp decimal_in(d, v, scale, at, i) do
    case Decimal.rescale(d, scale) do
      {:ok, %Decimal{coefficient: c}} ->
        c

      :error ->
        fail_value(:inexact_decimal,
          field: :value,
          value: v,
          limit: "scale #{scale}",
          at: row(at, i),
          hint: "round the value to the column's scale, or declare a larger scale"
        )
    end
  end

  # -------------------------------------------------------------------- errors

  defp check_all(values, at, ok?, expected) do
    case Enum.find_index(values, &(not ok?.(&1))) do
      nil -> :ok
      i -> wrong(Enum.at(values, i), expected, at, i)
    end
  end

  @doc false
  def row(at, nil), do: at
  def row(at, i), do: "#{at} row #{i}"

  @doc false
  def wrong(v, expected, at, i) do
    fail_value(:wrong_type, field: :value, value: v, limit: expected, at: row(at, i))
  end

  @doc false
  def not_utf8(v, at, i) do
    fail_value(:invalid_utf8,
      field: :value,
      value: v,
      at: row(at, i),
      hint: "the column is utf8; declare it :binary for arbitrary bytes"
    )
  end

  @doc false
  def int_overflow(v, type, at, i) do
    fail_value(:integer_overflow,
      field: :value,
      value: v,
      limit: inspect(type),
      at: row(at, i),
      hint: "declare a wider integer type"
    )
  end
end
