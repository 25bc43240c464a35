defmodule Bridge.Metrics.Streams do
  @moduledoc false
  # The result streams of Bridge.stream/3 per pool and function, counted once
  # per stream when it ends (Bridge.Stream.Events): an ETS row of counters
  # {key, streams, errors, cancelled, elements, bytes, microseconds, in_flight}.
  # `in_flight` sums, over the elements taken, how many more had arrived then:
  # divided by the elements, the window's mean occupancy.

  @table Bridge.Metrics.Streams

  @doc false
  @spec init() :: :ok
  def init do
    if :ets.whereis(@table) == :undefined,
      do: :ets.new(@table, [:set, :public, :named_table, write_concurrency: true])

    :ok
  end

  @doc false
  @spec record(map(), integer(), map(), :ok | :cancelled | :error) :: :ok
  def record(%{pool: pool, module: m, function: f}, duration, span, result) do
    us = System.convert_time_unit(duration, :native, :microsecond)
    error = if result == :error, do: 1, else: 0
    cancelled = if result == :cancelled, do: 1, else: 0

    ops = [
      {2, 1},
      {3, error},
      {4, cancelled},
      {5, span.elements},
      {6, span.bytes},
      {7, us},
      {8, span.in_flight}
    ]

    :ets.update_counter(@table, {pool, m, f}, ops, {{pool, m, f}, 0, 0, 0, 0, 0, 0, 0})
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Per {pool, "module.function"}: the streams, their errors and early
  # closes, elements and bytes, and what follows from them.
  @spec snapshot() :: map()
  def snapshot do
    rows = if :ets.whereis(@table) == :undefined, do: [], else: :ets.tab2list(@table)

    rows
    |> Enum.group_by(fn {{pool, m, f}, _, _, _, _, _, _, _} -> {pool, "#{m}.#{f}"} end)
    |> Map.new(fn {name, rows} ->
      [s, e, c, n, b, us, inf] =
        Enum.reduce(rows, List.duplicate(0, 7), fn row, acc ->
          row |> Tuple.to_list() |> tl() |> Enum.zip_with(acc, &+/2)
        end)

      {name,
       %{
         streams: s,
         errors: e,
         cancelled: c,
         elements: n,
         bytes: b,
         microseconds: us,
         elements_per_second: if(us > 0, do: n * 1_000_000 / us, else: 0.0),
         bytes_per_second: if(us > 0, do: b * 1_000_000 / us, else: 0.0),
         mean_in_flight: if(n > 0, do: inf / n, else: 0.0)
       }}
    end)
  end

  @doc false
  @spec reset() :: :ok
  def reset do
    if :ets.whereis(@table) != :undefined, do: :ets.delete_all_objects(@table)
    :ok
  end
end
