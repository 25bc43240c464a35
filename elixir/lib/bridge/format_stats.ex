defmodule Bridge.FormatStats do
  @moduledoc false
  # Owns the public ETS table of format decisions (SPEC §8.1 "counted per
  # (direction, form, reason)"): {{direction, form, reason}, count, bytes}.
  # Started by Bridge.Application; every worker of every bridge adds to it with
  # :ets.update_counter (atomic), once per call. Read with Bridge.format_stats/0.

  use GenServer

  require Logger

  @table __MODULE__
  @warned Bridge.FormatStats.Warned

  @spec start_link(term()) :: GenServer.on_start()
  def start_link(_arg), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @impl true
  def init(nil) do
    :ets.new(@table, [:named_table, :public, :set, write_concurrency: true])
    :ets.new(@warned, [:named_table, :public, :set, write_concurrency: true])
    {:ok, nil}
  end

  # `counts` is a map {direction, form, reason} => {count, bytes}.
  @spec add(map()) :: :ok
  def add(counts) when map_size(counts) == 0, do: :ok

  def add(counts) do
    Enum.each(counts, fn {key, {count, bytes}} ->
      :ets.update_counter(@table, key, [{2, count}, {3, bytes}], {key, 0, 0})
    end)
  rescue
    # The application is not running (no table): decisions are not counted.
    ArgumentError -> :ok
  end

  @spec all() :: [map()]
  def all do
    @table
    |> :ets.tab2list()
    |> Enum.map(fn {{direction, form, reason}, count, bytes} ->
      %{direction: direction, form: form, reason: reason, count: count, bytes: bytes}
    end)
    |> Enum.sort_by(&{&1.direction, &1.form, &1.reason})
  rescue
    ArgumentError -> []
  end

  @spec reset() :: :ok
  def reset do
    :ets.delete_all_objects(@table)
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Logs a warning about a slow path (a fallback), at most once a second for each
  # distinct `cause`: the first time a cause happens it is always logged.
  @spec warn(term(), (() -> String.t())) :: :ok
  def warn(cause, message) do
    now = System.monotonic_time(:millisecond)

    logged? =
      try do
        case :ets.lookup(@warned, cause) do
          [{_, last}] when now - last < 1_000 -> false
          _ -> :ets.insert(@warned, {cause, now})
        end
      rescue
        ArgumentError -> true
      end

    if logged?, do: Logger.warning(message)
    :ok
  end
end
