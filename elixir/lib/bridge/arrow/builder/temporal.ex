defmodule Bridge.Arrow.Builder.Temporal do
  @moduledoc false
  # Temporal values to the integers Arrow stores, for Bridge.Arrow.Builder:
  # dates (Date or days), timestamps (NaiveDateTime without a zone, DateTime
  # with one, or integers in the unit), times of day (Time or integers in the
  # unit), each exact in the column's unit and within its storage, or a
  # :bad_call error naming the column and row.

  import Bridge.Arrow.Errors, only: [fail_value: 2]

  alias Bridge.Arrow.Builder

  def date(nil, _at, _i), do: 0
  def date(v, _at, _i) when is_integer(v), do: v
  def date(%Date{calendar: Calendar.ISO} = d, _at, _i), do: Date.to_gregorian_days(d) - 719_528
  def date(v, at, i), do: Builder.wrong(v, "a Date (or days since 1970-01-01)", at, i)

  @per_us %{s: 1_000_000, ms: 1000, us: 1}

  def timestamp(nil, _unit, _tz, _at, _i), do: 0
  def timestamp(v, _unit, _tz, _at, _i) when is_integer(v), do: v

  def timestamp(%NaiveDateTime{} = v, unit, nil, at, i) do
    v
    |> DateTime.from_naive!("Etc/UTC")
    |> DateTime.to_unix(:microsecond)
    |> to_unit(unit, v, at, i)
  end

  def timestamp(%DateTime{} = v, unit, tz, at, i) when is_binary(tz) do
    v |> DateTime.to_unix(:microsecond) |> to_unit(unit, v, at, i)
  end

  def timestamp(%NaiveDateTime{} = v, _unit, _tz, at, i),
    do: Builder.wrong(v, "a DateTime (the column has a time zone)", at, i)

  def timestamp(%DateTime{} = v, _unit, nil, at, i),
    do: Builder.wrong(v, "a NaiveDateTime (the column has no time zone)", at, i)

  def timestamp(v, _unit, _tz, at, i), do: Builder.wrong(v, "a DateTime or NaiveDateTime", at, i)

  defp to_unit(us, :ns, _v, _at, _i), do: us * 1000

  defp to_unit(us, unit, v, at, i) do
    per = @per_us[unit]

    if rem(us, per) == 0,
      do: div(us, per),
      else:
        fail_value(:inexact_temporal,
          field: :value,
          value: v,
          at: Builder.row(at, i),
          hint:
            "the value is finer than the column's unit #{inspect(unit)}; truncate it or use a finer unit"
        )
  end

  # A temporal value's stored integer, which must fit the column's width (it
  # would wrap around otherwise).
  def stored(x, w, v, at, i) do
    if Builder.fits?(x, w),
      do: x,
      else:
        fail_value(:temporal_out_of_range,
          field: :value,
          value: v,
          limit: "#{w}-bit",
          at: Builder.row(at, i),
          hint: "the value is beyond what the column's unit can store; use a coarser unit"
        )
  end

  def time_of_day(nil, _per, _at, _i), do: 0

  def time_of_day(v, per, at, i) when is_integer(v) do
    if v >= 0 and v < 86_400 * per,
      do: v,
      else: Builder.wrong(v, "a time of day (0 <= v < 86400 s in the column's unit)", at, i)
  end

  def time_of_day(%Time{calendar: Calendar.ISO} = t, per, at, i) do
    {seconds, us} = Time.to_seconds_after_midnight(t)
    total_us = seconds * 1_000_000 + us

    cond do
      per >= 1_000_000 ->
        total_us * div(per, 1_000_000)

      rem(total_us, div(1_000_000, per)) == 0 ->
        div(total_us, div(1_000_000, per))

      true ->
        fail_value(:inexact_temporal,
          field: :value,
          value: t,
          at: Builder.row(at, i),
          hint: "the value is finer than the column's unit; truncate it or use a finer unit"
        )
    end
  end

  def time_of_day(v, _per, at, i), do: Builder.wrong(v, "a Time or an integer", at, i)
end
