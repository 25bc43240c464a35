defmodule Bridge.Metrics.Row do
  @moduledoc false
  # Where each number of Bridge.Metrics lives in a function's array of atomics
  # (one array per {pool, module, function}), and how it is written and read:
  # its calls, errors and fallbacks; a histogram per part of a call and one of
  # its bytes; the values and bytes per direction and form
  # (Bridge.Registry.counted_forms/0); per form (the one that carried most of a
  # call's bytes) a histogram of the duration; per form and size class the
  # calls and the sum of their durations. Plain :atomics (unsigned): a
  # :counters array is the same thing behind one more function call.
  #
  # A histogram takes 1 + @buckets counters: its sum, then its buckets (values
  # from 2^32 on share the last bucket).

  import Bitwise

  alias Bridge.Metrics.Histogram

  @buckets 128
  @width 1 + @buckets
  @parts [
    :duration,
    :encode,
    :copy,
    :wait,
    :queue,
    :transfer,
    :worker_decode,
    :handler,
    :worker_encode,
    :decode
  ]
  @hists @parts ++ [:size]
  @directions [:to_python, :from_python]
  @forms Bridge.Registry.counted_forms()
  @form_index @forms |> Enum.with_index() |> Map.new()
  @nforms length(@forms)
  @etf_index Map.fetch!(@form_index, :etf)

  @calls 1
  @errors 2
  @fallbacks 3
  # the calls whose answer carried the worker's timings
  @timed 4
  @hist_at 5
  # parts measured only when the worker reports its timings
  @worker_parts [:queue, :transfer, :worker_decode, :handler, :worker_encode]
  @bytes_at @hist_at + length(@hists) * @width
  @form_hist_at @bytes_at + 2 * length(@directions) * length(@forms)
  @classes 16
  @cell_at @form_hist_at + length(@forms) * @width
  @size @cell_at + 2 * length(@forms) * @classes

  # the reasons a value at or above the threshold went inline instead (SPEC §10.1)
  @fallback_reasons [:too_large, :arena_full, :no_space, :no_tickets]

  @doc false
  @spec parts() :: [atom()]
  def parts, do: @parts

  @doc false
  @spec new() :: :atomics.atomics_ref()
  def new, do: :atomics.new(@size, signed: false)

  # The position of part `part`'s histogram (at compile time).
  defmacrop at(part), do: @hist_at + Enum.find_index(@parts, &(&1 == part)) * @width

  @doc false
  # One call into a function's row: its timings (Bridge.Metrics.timings/0) and
  # its format decisions (Bridge.FormatStats). The call's form is the one that
  # carried most of its bytes (:etf when none was counted). About thirty
  # atomic additions.
  @spec add_call(:atomics.atomics_ref(), tuple(), boolean(), [map()]) :: :ok
  def add_call(ref, {duration, encode, copy, wait, decode, worker}, error?, tallies) do
    per_us = :persistent_term.get(__MODULE__)
    :atomics.add(ref, @calls, 1)
    if error?, do: :atomics.add(ref, @errors, 1)
    duration = div(duration, per_us)
    add_value(ref, at(:duration), duration)
    add_value(ref, at(:encode), div(encode, per_us))
    add_value(ref, at(:copy), div(copy, per_us))
    add_value(ref, at(:wait), div(wait, per_us))
    add_value(ref, at(:decode), div(decode, per_us))
    add_worker(ref, worker, div(wait, per_us), per_us)
    {size, form, _most} = Enum.reduce(tallies, {0, :etf, -1}, &add_tally(ref, &1, &2))
    add_value(ref, @hist_at + length(@parts) * @width, size)
    f = Map.get(@form_index, form, @etf_index)
    add_value(ref, @form_hist_at + f * @width, duration)
    cell = @cell_at + 2 * (f * @classes + size_class(size))
    :atomics.add(ref, cell, 1)
    :atomics.add(ref, cell + 1, duration)
  end

  defp add_worker(_ref, nil, _wait, _per_us), do: :ok

  defp add_worker(ref, {queue, d, r, e}, wait, per_us) do
    :atomics.add(ref, @timed, 1)
    queue = div(queue, per_us)
    add_value(ref, at(:queue), queue)
    add_value(ref, at(:transfer), max(wait - queue - d - r - e, 0))
    add_value(ref, at(:worker_decode), d)
    add_value(ref, at(:handler), r)
    add_value(ref, at(:worker_encode), e)
  end

  @doc false
  # Called once, by Bridge.Metrics.init/0: the native time units in a
  # microsecond (at least 1).
  @spec init() :: :ok
  def init,
    do:
      :persistent_term.put(__MODULE__, max(System.convert_time_unit(1, :microsecond, :native), 1))

  defp add_tally(ref, tally, acc) do
    :maps.fold(
      fn {direction, form, reason}, {count, bytes}, {size, top, most} ->
        case {direction, @form_index} do
          {:to_python, %{^form => f}} ->
            add_bytes(ref, @bytes_at + 2 * f, count, bytes)

          {:from_python, %{^form => f}} ->
            add_bytes(ref, @bytes_at + 2 * (@nforms + f), count, bytes)

          _ ->
            :ok
        end

        if reason in @fallback_reasons, do: :atomics.add(ref, @fallbacks, count)
        if bytes > most, do: {size + bytes, form, bytes}, else: {size + bytes, top, most}
      end,
      acc,
      tally
    )
  end

  defp add_bytes(ref, at, count, bytes) do
    :atomics.add(ref, at, count)
    :atomics.add(ref, at + 1, bytes)
  end

  # A zero is not added: bucket 0 is what the histogram's count leaves (read/1).
  defp add_value(_ref, _at, v) when v <= 0, do: :ok

  defp add_value(ref, at, v) do
    :atomics.add(ref, at, v)

    case Histogram.bucket(v) do
      b when b < @buckets -> :atomics.add(ref, at + 1 + b, 1)
      _ -> :atomics.add(ref, at + @buckets, 1)
    end
  end

  @doc false
  # Every counter of a row back to 0 (the row stays: callers keep its ref).
  @spec zero(:atomics.atomics_ref()) :: :ok
  def zero(ref), do: Enum.each(1..@size, &:atomics.put(ref, &1, 0))

  @doc false
  # A function's row as data.
  @spec read(:atomics.atomics_ref()) :: map()
  def read(ref) do
    hists =
      for {name, k} <- Enum.with_index(@hists),
          into: %{},
          do: {name, histogram(ref, @hist_at + k * @width, measured(ref, name))}

    bytes =
      for {direction, d} <- Enum.with_index(@directions), into: %{} do
        forms =
          for {form, f} <- Enum.with_index(@forms),
              at = @bytes_at + 2 * (d * length(@forms) + f),
              (count = :atomics.get(ref, at)) > 0,
              into: %{},
              do: {form, %{count: count, bytes: :atomics.get(ref, at + 1)}}

        {direction, forms}
      end

    formats =
      for {form, f} <- Enum.with_index(@forms),
          h = histogram(ref, @form_hist_at + f * @width, nil),
          h.count > 0,
          into: %{},
          do: {form, %{calls: h.count, duration: h}}

    sizes =
      for {form, f} <- Enum.with_index(@forms),
          class <- 0..(@classes - 1),
          cell = @cell_at + 2 * (f * @classes + class),
          (calls = :atomics.get(ref, cell)) > 0,
          into: %{},
          do:
            {{form, class_floor(class)},
             %{calls: calls, duration_sum: :atomics.get(ref, cell + 1)}}

    Map.merge(hists, %{
      calls: :atomics.get(ref, @calls),
      errors: :atomics.get(ref, @errors),
      fallbacks: :atomics.get(ref, @fallbacks),
      bytes: bytes,
      formats: formats,
      sizes: sizes
    })
  end

  defp measured(ref, part) when part in @worker_parts, do: :atomics.get(ref, @timed)
  defp measured(ref, _part), do: :atomics.get(ref, @calls)

  # The histogram whose sum is at position `at`, of `count` values (nil: those
  # of its buckets; else the zeros not added make up bucket 0).
  defp histogram(ref, at, count) do
    buckets =
      for i <- 0..(@buckets - 1), (n = :atomics.get(ref, at + 1 + i)) > 0, into: %{}, do: {i, n}

    counted = buckets |> Map.values() |> Enum.sum()

    case count do
      c when is_integer(c) and c > counted ->
        %{
          count: c,
          sum: :atomics.get(ref, at),
          buckets: Map.update(buckets, 0, c - counted, &(&1 + c - counted))
        }

      _ ->
        %{count: counted, sum: :atomics.get(ref, at), buckets: buckets}
    end
  end

  @doc false
  # The size class of a call of `bytes`: 0 below 1 KiB, then one class per
  # power of four (1 KiB, 4 KiB, 16 KiB, ...), at most 15.
  @spec size_class(non_neg_integer()) :: 0..15
  def size_class(bytes) when bytes < 1024, do: 0

  def size_class(bytes) do
    # the bucket of `bytes` names its power of two (four buckets per power)
    power = div(Histogram.bucket(bytes), 4) + 1
    min(div(power - 10, 2) + 1, 15)
  end

  @doc false
  # The smallest size of class `k`, in bytes.
  @spec class_floor(0..15) :: non_neg_integer()
  def class_floor(0), do: 0
  def class_floor(k), do: 256 <<< (2 * k)
end
