defmodule Bridge.Arrow.Values do
  @moduledoc false
  # Arrays to Elixir terms (Bridge.Table.to_rows/to_columns/column). Strings
  # and binaries are copied out of the input, so values never keep a slice's
  # payload alive; numbers and temporal values are plain terms.
  #
  # Floats that Elixir cannot represent come out as :nan, :infinity and
  # :neg_infinity (as in Nx). Temporal values come out as Date, NaiveDateTime
  # (no time zone) or DateTime (in UTC; the zone name stays in the schema), or
  # with `temporal: :integer` as the stored integers. A value with no exact
  # term (a nanosecond timestamp with a sub-microsecond part, a date64 that is
  # not a whole day, a year outside -9999..9999) raises a Bridge.Error that
  # says to use `temporal: :integer`. Times of day come out as Time (the
  # same rule for nanoseconds), durations as integers in the column's unit,
  # intervals as months, {days, milliseconds} or {months, days, nanoseconds},
  # decimals as Bridge.Arrow.Decimal, structs as maps of field name to value,
  # maps as lists of {key, value}, unions as {type_code, value}, run-end
  # encoded and view arrays as the values they stand for.

  import Bitwise

  alias Bridge.Arrow.{Array, Checks, Decimal, Errors, Type}

  @epoch_days 719_528
  @min_days -3_652_059
  @max_days 3_652_424
  @day_ms 86_400_000

  @doc false
  @spec to_list(Array.t(), keyword()) :: [term()]
  def to_list(%Array{} = a, opts) do
    values = values(a, opts)

    case a do
      %Array{type: :null} -> values
      %Array{validity: nil} -> values
      %Array{null_count: 0} -> values
      %Array{validity: v, length: n} -> mask(values, Array.bits(v, n))
    end
  end

  defp mask([v | vs], [true | bs]), do: [v | mask(vs, bs)]
  defp mask([_ | vs], [false | bs]), do: [nil | mask(vs, bs)]
  defp mask([], []), do: []

  defp values(%Array{type: :null, length: n}, _opts), do: List.duplicate(nil, n)
  defp values(%Array{type: :bool, data: d, length: n}, _opts), do: Array.bits(d, n)

  defp values(%Array{type: {:s, w}, data: d}, _),
    do: for(<<x::little-signed-size(w) <- d>>, do: x)

  defp values(%Array{type: {:u, w}, data: d}, _), do: for(<<x::little-size(w) <- d>>, do: x)

  defp values(%Array{type: {:f, w}, data: d, length: n}, _) do
    # Fast path: a comprehension skips what its pattern does not match, so it
    # is exact only when every value is a finite float (the count says so).
    fast = for <<x::float-little-size(w) <- d>>, do: x

    if length(fast) == n,
      do: fast,
      else: for(<<x::bits-size(w) <- d>>, do: float(x, w))
  end

  defp values(%Array{type: :date32, data: d}, opts) do
    ints = for <<x::little-signed-32 <- d>>, do: x
    if integer?(opts), do: ints, else: Enum.map(ints, &date/1)
  end

  defp values(%Array{type: :date64, data: d}, opts) do
    ints = for <<x::little-signed-64 <- d>>, do: x
    if integer?(opts), do: ints, else: Enum.map(ints, &date64/1)
  end

  defp values(%Array{type: {:timestamp, unit, tz}, data: d}, opts) do
    ints = for <<x::little-signed-64 <- d>>, do: x
    if integer?(opts), do: ints, else: Enum.map(ints, &timestamp(&1, unit, tz))
  end

  defp values(%Array{type: {:decimal, bits, _, scale}, data: d}, _) do
    for <<c::little-signed-size(bits) <- d>>, do: %Decimal{coefficient: c, scale: scale}
  end

  defp values(%Array{type: {:fixed_size_binary, w}, data: d, length: n}, _) do
    if w == 0,
      do: List.duplicate("", n),
      else: for(<<x::binary-size(w) <- d>>, do: :binary.copy(x))
  end

  defp values(%Array{type: {time, unit}, data: d}, opts) when time in [:time32, :time64] do
    w = Type.byte_width({time, unit}) * 8
    ints = for <<x::little-signed-size(w) <- d>>, do: x
    if integer?(opts), do: ints, else: Enum.map(ints, &time_of_day(&1, unit))
  end

  defp values(%Array{type: {:duration, _}, data: d}, _),
    do: for(<<x::little-signed-64 <- d>>, do: x)

  defp values(%Array{type: {:interval, :year_month}, data: d}, _),
    do: for(<<m::little-signed-32 <- d>>, do: m)

  defp values(%Array{type: {:interval, :day_time}, data: d}, _),
    do: for(<<days::little-signed-32, ms::little-signed-32 <- d>>, do: {days, ms})

  defp values(%Array{type: {:interval, :month_day_nano}, data: d}, _) do
    for <<m::little-signed-32, days::little-signed-32, ns::little-signed-64 <- d>>,
      do: {m, days, ns}
  end

  defp values(%Array{type: t, data: views, variadic: buffers} = a, _)
       when t in [:utf8_view, :binary_view] do
    buffers = List.to_tuple(buffers)
    valid = if a.null_count > 0 and a.validity, do: Array.bits(a.validity, a.length), else: nil
    viewed(views, valid, buffers)
  end

  defp values(%Array{type: t, offsets: o, data: d}, _opts)
       when t in [:utf8, :large_utf8, :binary, :large_binary] do
    w = Type.offset_width(t) * 8
    <<first::little-size(w), rest::binary>> = o
    slices(rest, w, first, d)
  end

  defp values(%Array{type: t, offsets: o, children: [child]}, opts)
       when elem(t, 0) in [:list, :large_list] do
    w = Type.offset_width(t) * 8
    <<first::little-size(w), rest::binary>> = o
    items = child |> to_list(opts) |> Enum.drop(first)
    split(rest, w, first, items)
  end

  defp values(%Array{type: {:map, _, _}, offsets: o, children: [entries]}, opts) do
    [keys, vals] = Enum.map(entries.children, &to_list(&1, opts))
    <<first::little-32, rest::binary>> = o
    items = Enum.zip(keys, vals) |> Enum.drop(first)
    split(rest, 32, first, items)
  end

  defp values(%Array{type: {kind, _}, offsets: o, sizes: s, children: [child]}, opts)
       when kind in [:list_view, :large_list_view] do
    w = Type.offset_width({kind, nil}) * 8
    items = child |> to_list(opts) |> List.to_tuple()

    for {off, size} <- Enum.zip(ints(o, w), ints(s, w)),
        do: for(j <- off..(off + size - 1)//1, do: elem(items, j))
  end

  defp values(%Array{type: {:fixed_size_list, _, size}, length: n, children: [child]}, opts) do
    if size == 0,
      do: List.duplicate([], n),
      else: child |> to_list(opts) |> Enum.take(n * size) |> Enum.chunk_every(size)
  end

  defp values(%Array{type: {:struct, fields}, length: n, children: children}, opts) do
    names = Enum.map(fields, & &1.name)

    if length(Enum.uniq(names)) != length(names),
      do:
        raise(
          Errors.stream(:duplicate_field,
            field: :struct,
            value: names,
            hint: "a struct with repeated field names has no map value; read its chunks"
          )
        )

    # (Children may be longer than the struct: only its rows are read.)
    columns =
      Enum.map(children, fn c ->
        values = to_list(c, opts)
        if c.length > n, do: Enum.take(values, n), else: values
      end)

    case columns do
      [] -> List.duplicate(%{}, n)
      _ -> Enum.zip_with(columns, &:maps.from_list(:lists.zip(names, &1)))
    end
  end

  defp values(%Array{type: {:union, mode, _, codes}, data: types} = a, opts) do
    columns = a.children |> Enum.map(&(&1 |> to_list(opts) |> List.to_tuple()))
    child = codes |> Enum.zip(columns) |> Map.new()
    type_codes = for <<c::signed-8 <- types>>, do: c

    case mode do
      :sparse ->
        type_codes
        |> Enum.with_index()
        |> Enum.map(fn {c, i} -> {c, elem(Map.fetch!(child, c), i)} end)

      :dense ->
        Enum.zip_with(type_codes, ints(a.offsets, 32), fn c, o ->
          {c, elem(Map.fetch!(child, c), o)}
        end)
    end
  end

  defp values(%Array{type: {:run_end_encoded, _, _}, length: n, children: [ends, vals]}, opts) do
    {:s, w} = ends.type
    runs = Enum.zip(ints(ends.data, w), to_list(vals, opts))

    {out, _} =
      Enum.reduce_while(runs, {[], 0}, fn {e, v}, {acc, prev} ->
        stop = min(e, n)
        acc = [List.duplicate(v, stop - prev) | acc]
        if stop >= n, do: {:halt, {acc, stop}}, else: {:cont, {acc, stop}}
      end)

    out |> Enum.reverse() |> Enum.concat()
  end

  defp values(%Array{type: {:dictionary, {s, w}, _, _}, data: d, dictionary: dict}, opts) do
    lookup = [dict | dict.deltas] |> Enum.flat_map(&to_list(&1, opts)) |> List.to_tuple()
    size = tuple_size(lookup)

    indices =
      case s do
        :s -> for <<i::little-signed-size(w) <- d>>, do: i
        :u -> for <<i::little-size(w) <- d>>, do: i
      end

    # Indices of null slots are not checked on decode and may be anything.
    Enum.map(indices, fn i -> if i >= 0 and i < size, do: elem(lookup, i), else: nil end)
  end

  defp slices(<<>>, _w, _prev, _data), do: []

  defp slices(offsets, w, prev, data) do
    <<next::little-size(w), rest::binary>> = offsets
    [:binary.copy(binary_part(data, prev, next - prev)) | slices(rest, w, next, data)]
  end

  defp split(<<>>, _w, _prev, _items), do: []

  defp split(offsets, w, prev, items) do
    <<next::little-size(w), rest::binary>> = offsets
    {list, items} = take(items, next - prev, [])
    [list | split(rest, w, next, items)]
  end

  defp take(items, 0, acc), do: {:lists.reverse(acc), items}
  defp take([item | items], n, acc), do: take(items, n - 1, [item | acc])

  defp ints(bin, w), do: for(<<x::little-signed-size(w) <- bin>>, do: x)

  defp viewed(<<>>, _valid, _buffers), do: []

  defp viewed(<<_::binary-16, rest::binary>>, [false | valid], buffers),
    do: [nil | viewed(rest, valid, buffers)]

  defp viewed(<<view::binary-16, rest::binary>>, valid, buffers) do
    bytes = :binary.copy(Checks.view_bytes(view, buffers, "view"))
    [bytes | viewed(rest, valid && tl(valid), buffers)]
  end

  defp integer?(opts), do: Keyword.get(opts, :temporal, :native) == :integer

  # ------------------------------------------------------------------- floats

  defp float(<<x::float-little-16>>, 16), do: x
  defp float(<<x::float-little-32>>, 32), do: x
  defp float(<<x::float-little-64>>, 64), do: x
  defp float(bits, w), do: special(bits, w)

  # Not a finite number: all exponent bits set. Mantissa zero is an infinity.
  defp special(bits, w) do
    <<x::little-size(w)>> = bits
    mantissa_bits = %{16 => 10, 32 => 23, 64 => 52}[w]
    mantissa = x &&& (1 <<< mantissa_bits) - 1
    negative = x >>> (w - 1) == 1

    cond do
      mantissa != 0 -> :nan
      negative -> :neg_infinity
      true -> :infinity
    end
  end

  # ------------------------------------------------------------------ temporal

  defp date(days) when (days + @epoch_days) in @min_days..@max_days,
    do: Date.from_gregorian_days(days + @epoch_days)

  defp date(days), do: lossy(:temporal_out_of_range, :date32, days)

  defp date64(ms) when rem(ms, @day_ms) == 0, do: date(div(ms, @day_ms))
  defp date64(ms), do: lossy(:inexact_temporal, :date64, ms)

  defp timestamp(v, :ns, tz) when rem(v, 1000) == 0, do: timestamp(div(v, 1000), :us, tz)
  defp timestamp(v, :ns, _tz), do: lossy(:inexact_temporal, :timestamp, v)

  defp timestamp(v, unit, tz) do
    erl_unit = %{s: :second, ms: :millisecond, us: :microsecond}[unit]

    case DateTime.from_unix(v, erl_unit) do
      {:ok, dt} when tz == nil -> DateTime.to_naive(dt)
      {:ok, dt} -> dt
      {:error, _} -> lossy(:temporal_out_of_range, :timestamp, v)
    end
  end

  @per_second %{s: 1, ms: 1000, us: 1_000_000, ns: 1_000_000_000}

  defp time_of_day(v, unit) do
    per = @per_second[unit]

    cond do
      v < 0 or v >= 86_400 * per ->
        lossy(:temporal_out_of_range, :time, v)

      unit == :ns and rem(v, 1000) != 0 ->
        lossy(:inexact_temporal, :time, v)

      true ->
        us = if unit == :ns, do: div(v, 1000), else: v * div(1_000_000, per)
        precision = %{s: 0, ms: 3, us: 6, ns: 6}[unit]
        Time.from_seconds_after_midnight(div(us, 1_000_000), {rem(us, 1_000_000), precision})
    end
  end

  defp lossy(reason, field, value) do
    raise Errors.stream(reason,
            field: field,
            value: value,
            hint:
              "no exact Elixir term for this value; pass temporal: :integer to get the stored integer"
          )
  end
end
