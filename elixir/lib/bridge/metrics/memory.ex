defmodule Bridge.Metrics.Memory do
  @moduledoc """
  The shared memory the bridge uses now, for capacity planning: read with
  `Bridge.Metrics.memory/0`.

    * `headroom` — bytes a new shared object may still take on this machine
      and in this process's cgroups (less a margin for the rest of the node);
    * `fallbacks` — per reason, values at or above the threshold that went
      inline because no slice could be had, both ways (`too_large`: past
      `:arena_limit`; `arena_full`; `no_space`: past the headroom;
      `no_tickets`);
    * `evictions` — memory taken back from holders: `arenas_dropped` (idle
      arenas this node gave back) and `caller_gcs` (garbage collections forced
      on a caller whose dropped results kept the worker's arenas full);
    * `pools` — per pool: this node's arenas for arguments (`arenas`,
      `arena_bytes`, `used_bytes`, `live_slices`, `arena_limit` and the peaks
      `peak_bytes`, `peak_used`), and per worker its arenas mapped here
      (`arenas`, `arena_bytes`), the result slices callers still hold
      (`held_slices`, `held_bytes`) and the argument slices lent to it
      (`lent_slices`), with their sums over the pool.

  `Bridge.Metrics.Monitor` samples this every few seconds: the peaks of the
  workers' side and the samples over time come from it (`Bridge.Metrics.history/0`).
  """

  alias Bridge.{Arena, Config}

  @fallback_reasons [:too_large, :arena_full, :no_space, :no_tickets]

  @doc false
  # Called once, by the application at start: the node's count of forced
  # caller collections.
  @spec init() :: :ok
  def init do
    unless :persistent_term.get({__MODULE__, :caller_gcs}, nil),
      do: :persistent_term.put({__MODULE__, :caller_gcs}, :atomics.new(1, signed: false))

    :ok
  end

  @doc false
  # One more collection forced on a caller (Bridge.CallerGC).
  @spec caller_gc() :: :ok
  def caller_gc do
    case :persistent_term.get({__MODULE__, :caller_gcs}, nil) do
      nil -> :ok
      ref -> :atomics.add(ref, 1, 1)
    end
  end

  @doc "The memory in use now (see the module's documentation)."
  @spec snapshot() :: map()
  def snapshot do
    pools = Map.new(pools(), fn name -> {name, pool(name)} end)
    stats = Bridge.FormatStats.all()

    fallbacks =
      Map.new(@fallback_reasons, fn reason ->
        {reason,
         stats |> Enum.filter(&(&1.reason == reason)) |> Enum.map(& &1.count) |> Enum.sum()}
      end)

    %{
      headroom: Bridge.Memory.headroom(),
      fallbacks: fallbacks,
      evictions: %{
        arenas_dropped: pools |> Map.values() |> Enum.map(& &1.arenas_dropped) |> Enum.sum(),
        caller_gcs: caller_gcs()
      },
      pools: pools
    }
  end

  @doc false
  # A snapshot as one point of history (Bridge.Metrics.history/0): the time
  # (system, ms), the headroom and per pool the figures that change over time.
  @spec sample(map()) :: map()
  def sample(memory) do
    pools =
      Map.new(memory.pools, fn {pool, p} ->
        {pool,
         Map.take(p, [
           :arena_bytes,
           :used_bytes,
           :live_slices,
           :arena_limit,
           :worker_arena_bytes,
           :held_slices,
           :held_bytes
         ])}
      end)

    %{at: System.system_time(:millisecond), headroom: memory.headroom, pools: pools}
  end

  defp caller_gcs do
    case :persistent_term.get({__MODULE__, :caller_gcs}, nil) do
      nil -> 0
      ref -> :atomics.get(ref, 1)
    end
  end

  # The pools running on this node (their configs are persistent terms).
  defp pools do
    for {{Config, name}, %Config{arena: arena}} <- :persistent_term.get(), arena != nil, do: name
  end

  defp pool(name) do
    config = Config.get(name)

    arenas =
      case config && config.arena && Arena.stats(config.arena) do
        {:ok, s} -> s
        _ -> %{}
      end

    workers =
      for w <- Bridge.workers(name), into: %{} do
        {w.id,
         %{
           arenas: w.worker_arenas,
           arena_bytes: w.worker_arena_bytes,
           held_slices: w.held_slices,
           held_bytes: w.held_bytes,
           lent_slices: w.lent_slices
         }}
      end

    sum = fn key -> workers |> Map.values() |> Enum.map(&Map.fetch!(&1, key)) |> Enum.sum() end

    %{
      arenas: Map.get(arenas, :arenas, 0),
      arena_bytes: Map.get(arenas, :bytes, 0),
      used_bytes: Map.get(arenas, :used, 0),
      live_slices: Map.get(arenas, :live, 0),
      arena_limit: Map.get(arenas, :limit, 0),
      peak_bytes: Map.get(arenas, :peak_bytes, 0),
      peak_used: Map.get(arenas, :peak_used, 0),
      arenas_dropped: Map.get(arenas, :drops, 0),
      workers: workers,
      worker_arena_bytes: sum.(:arena_bytes),
      held_slices: sum.(:held_slices),
      held_bytes: sum.(:held_bytes),
      lent_slices: sum.(:lent_slices)
    }
  end
end
