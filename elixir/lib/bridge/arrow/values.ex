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
  # says to use `temporal: :integer`.

  import Bitwise

  alias Bridge.Arrow.{Array, Errors, Type}

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

  defp values(%Array{type: {:dictionary, {s, w}, _, _}, data: d, dictionary: dict}, opts) do
    lookup = dict |> to_list(opts) |> List.to_tuple()
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
    {list, items} = Enum.split(items, next - prev)
    [list | split(rest, w, next, items)]
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

  defp lossy(reason, field, value) do
    raise Errors.stream(reason,
            field: field,
            value: value,
            hint:
              "no exact Elixir term for this value; pass temporal: :integer to get the stored integer"
          )
  end
end
