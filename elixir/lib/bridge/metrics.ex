defmodule Bridge.Metrics do
  @moduledoc """
  What the bridge's calls cost, kept in this node as they happen and read with
  `snapshot/0`. Per pool and function:

    * `calls`, `errors`, and `fallbacks` (argument values at or above the
      threshold that went inline: no slice could be had);
    * a log-bucketed histogram (`Bridge.Metrics.Histogram`) of each part of a
      call, in microseconds: `duration` (the whole call), `encode` (the
      arguments made ready, without `copy`), `copy` (their payloads written into
      shared memory), `wait` (from the request's send to its answer), which is
      `queue` (until a worker sent it on) + `transfer` (the pipe or lane both
      ways, and the answer's resolution) + the worker's own `worker_decode`
      (the arguments read in Python), `handler` (the handler run) and
      `worker_encode` (its result written), and `decode` (the answer read
      here). The worker reports its three with each answer (SPEC §8.3, from
      protocol 2.5); a failed call has only `duration`, `encode`, `copy`,
      `wait` and `decode`;
    * `size`: a histogram of each call's bytes (arguments and result, as
      counted by `Bridge.format_stats/0`);
    * `bytes`: per direction (`:to_python`, `:from_python`) and form (those of
      `Bridge.format_stats/0`), the values and their bytes;
    * `formats`: per form — the one that carried most of a call's bytes
      (`:etf` when only plain terms went) — the calls and their `duration`
      histogram;
    * `sizes`: per `{form, min_bytes}`, `min_bytes` the floor of the call's
      size class (0, then 1 KiB, 4 KiB, 16 KiB, ... one per power of four), the
      calls and the sum of their durations (microseconds).

  A call is recorded by a collector process of the scheduler it ran on, not
  by the caller: the caller sends it one message. Recording takes an ETS lookup
  and about thirty atomic additions
  (`make bench` measures it against metrics off); `config :beambridge,
  metrics: false` turns it off for the node (read at start).

  ## Examples

      Bridge.call({:arith, :add}, [1, 2])
      %{{Bridge, "arith.add"} => %{calls: 1, errors: 0, duration: h}} = Bridge.Metrics.snapshot()
      Bridge.Metrics.Histogram.quantile(h, 0.99)   #=> microseconds
  """

  require Logger

  alias Bridge.Metrics.{Collector, Histogram, Row}

  @table __MODULE__

  @typedoc """
  A call's timings as Bridge.Call.Timed takes them: `{duration, encode, copy,
  wait, decode, worker}` in native time units, `worker` nil or `{queue,
  worker_decode, handler, worker_encode}` (`queue` native, the other three the
  microseconds the worker reported).
  """
  @type timings ::
          {integer(), integer(), integer(), integer(), integer(),
           nil | {integer(), non_neg_integer(), non_neg_integer(), non_neg_integer()}}

  @typedoc "A histogram of microseconds (or, for `size`, bytes)."
  @type histogram :: Histogram.t()

  @typedoc """
  Per `{pool, "module.function"}`: counts, a histogram per part of a call, the
  bytes per direction and form, and the duration per form and size.
  """
  @type snapshot :: %{{atom(), String.t()} => entry()}

  @type entry :: %{
          required(:calls) => non_neg_integer(),
          required(:errors) => non_neg_integer(),
          required(:fallbacks) => non_neg_integer(),
          required(:bytes) => %{
            (:to_python | :from_python) => %{
              atom() => %{count: non_neg_integer(), bytes: non_neg_integer()}
            }
          },
          required(:formats) => %{atom() => %{calls: non_neg_integer(), duration: histogram()}},
          required(:sizes) => %{
            {atom(), non_neg_integer()} => %{
              calls: non_neg_integer(),
              duration_sum: non_neg_integer()
            }
          },
          optional(atom()) => histogram()
        }

  @doc false
  # Called once, by the application at start.
  @spec init() :: :ok
  def init do
    if :ets.whereis(@table) == :undefined,
      do:
        :ets.new(@table, [
          :set,
          :public,
          :named_table,
          write_concurrency: true,
          read_concurrency: true
        ])

    Row.init()
    Bridge.Metrics.Memory.init()
    Bridge.Metrics.Streams.init()

    :persistent_term.put(
      {__MODULE__, :on},
      Application.get_env(:beambridge, :metrics, true) != false
    )
  end

  @doc "Whether calls are recorded (`config :beambridge, metrics: false` turns it off)."
  @spec enabled?() :: boolean()
  def enabled?, do: :persistent_term.get({__MODULE__, :on}, false)

  @doc false
  # Turns recording on or off for the node (tests, benches).
  @spec enable(boolean()) :: :ok
  def enable(on?) when is_boolean(on?), do: :persistent_term.put({__MODULE__, :on}, on?)

  @doc false
  # Records one call: `timings` in native time units (Bridge.Call; a part that
  # is absent was not measured), `tallies` its format decisions. Sent to this
  # scheduler's collector (Bridge.Metrics.Collector), or recorded here when
  # there is none.
  @spec record(atom(), atom() | binary(), atom() | binary(), map(), :ok | :error, [map()]) ::
          :ok
  def record(pool, module, function, timings, result, tallies \\ []) do
    record = {:record, pool, module, function, timings, result, tallies}

    unless Collector.send_record(record),
      do: record_now(pool, module, function, timings, result, tallies)

    :ok
  end

  @doc false
  # Records one call: its function's array of counters (Bridge.Metrics.Row)
  # gets it, without a lock.
  @spec record_now(atom(), atom() | binary(), atom() | binary(), map(), :ok | :error, [map()]) ::
          :ok
  def record_now(pool, module, function, timings, result, tallies) do
    Row.add_call(counters({pool, module, function}), timings, result == :error, tallies)
  rescue
    # metrics never fail a call nor their collector; a row that cannot take
    # this call is reported once
    e ->
      if :persistent_term.get({__MODULE__, :failed}, nil) == nil do
        :persistent_term.put({__MODULE__, :failed}, true)
        Logger.error("beambridge metrics: a call could not be recorded: #{Exception.message(e)}")
      end

      :ok
  end

  @doc false
  # A call's timings as the measurements of its [:beambridge, :call, :stop]
  # event (Bridge.Telemetry): native time units, and its bytes.
  @spec measurements(timings(), [map()]) :: map()
  def measurements({duration, encode, copy, wait, decode, worker}, tallies) do
    parts = %{
      duration: duration,
      encode: encode,
      copy: copy,
      wait: wait,
      decode: decode,
      bytes: bytes(tallies)
    }

    case worker do
      nil ->
        parts

      {queue, d, r, e} ->
        [d, r, e] = Enum.map([d, r, e], &System.convert_time_unit(&1, :microsecond, :native))

        Map.merge(parts, %{
          queue: queue,
          transfer: max(wait - queue - d - r - e, 0),
          worker_decode: d,
          handler: r,
          worker_encode: e
        })
    end
  end

  @doc false
  # The bytes of a call's format decisions.
  @spec bytes([map()]) :: non_neg_integer()
  def bytes(tallies) do
    Enum.reduce(tallies, 0, fn tally, acc ->
      Enum.reduce(tally, acc, fn {_key, {_count, bytes}}, acc -> acc + bytes end)
    end)
  end

  # A function's counters, found in the caller's process dictionary after its
  # first call of the function (rows are never dropped: reset/0 zeroes them).
  defp counters(key) do
    case Process.get({__MODULE__, key}) do
      nil ->
        ref = shared_counters(key)
        Process.put({__MODULE__, key}, ref)
        ref

      ref ->
        ref
    end
  end

  defp shared_counters(key) do
    case :ets.lookup(@table, key) do
      [{_, ref}] ->
        ref

      [] ->
        ref = Row.new()
        if :ets.insert_new(@table, {key, ref}), do: ref, else: shared_counters(key)
    end
  end

  @doc """
  Every pool's and function's counts and histograms since the node started (or
  since `reset/0`).
  """
  @spec snapshot() :: snapshot()
  def snapshot do
    Collector.sync()
    rows = if :ets.whereis(@table) == :undefined, do: [], else: :ets.tab2list(@table)

    Enum.reduce(rows, %{}, fn {{pool, module, function}, ref}, acc ->
      case Row.read(ref) do
        %{calls: 0} ->
          acc

        entry ->
          Map.update(acc, {pool, name(module, function)}, entry, &merge_entry(&1, entry))
      end
    end)
  end

  defp name(module, function), do: "#{text(module)}.#{text(function)}"

  defp text(n) when is_atom(n) or is_binary(n), do: to_string(n)
  defp text(n), do: inspect(n)

  # An atom and a binary naming the same function are one entry.
  defp merge_entry(a, b) do
    Map.new(a, fn
      {k, v} when k in [:calls, :errors, :fallbacks] -> {k, v + b[k]}
      {:bytes, v} -> {:bytes, Map.merge(v, b.bytes, fn _, x, y -> merge_counts(x, y) end)}
      {:formats, v} -> {:formats, Map.merge(v, b.formats, fn _, x, y -> merge_format(x, y) end)}
      {:sizes, v} -> {:sizes, Map.merge(v, b.sizes, fn _, x, y -> merge_size(x, y) end)}
      {k, h} -> {k, Histogram.merge(h, b[k])}
    end)
  end

  defp merge_counts(x, y) do
    Map.merge(x, y, fn _, p, q -> %{count: p.count + q.count, bytes: p.bytes + q.bytes} end)
  end

  defp merge_format(a, b),
    do: %{calls: a.calls + b.calls, duration: Histogram.merge(a.duration, b.duration)}

  defp merge_size(a, b),
    do: %{calls: a.calls + b.calls, duration_sum: a.duration_sum + b.duration_sum}

  @doc """
  The shared memory in use now, for capacity planning
  (`Bridge.Metrics.Memory` says what each figure is), with per pool the peaks
  sampled since the node started: `peak_worker_arena_bytes`,
  `peak_held_bytes`, `peak_held_slices`.

      %{headroom: _, fallbacks: %{arena_full: 0}, pools: %{Bridge => %{arena_bytes: _}}} =
        Bridge.Metrics.memory()
  """
  @spec memory() :: map()
  def memory do
    memory = Bridge.Metrics.Memory.snapshot()
    peaks = Bridge.Metrics.Monitor.peaks()

    pools =
      Map.new(memory.pools, fn {pool, p} ->
        seen = Map.get(peaks, pool, %{})

        {pool,
         Map.merge(p, %{
           peak_worker_arena_bytes:
             max(Map.get(seen, :worker_arena_bytes, 0), p.worker_arena_bytes),
           peak_held_bytes: max(Map.get(seen, :held_bytes, 0), p.held_bytes),
           peak_held_slices: max(Map.get(seen, :held_slices, 0), p.held_slices)
         })}
      end)

    %{memory | pools: pools}
  end

  @doc """
  The memory samples kept (the last 360, one every `config :beambridge,
  monitor_interval:` milliseconds, default 5,000), oldest first: `at` (system
  time in milliseconds), `headroom`, and per pool `arena_bytes`, `used_bytes`,
  `live_slices`, `arena_limit`, `worker_arena_bytes`, `held_slices`,
  `held_bytes`.
  """
  @spec history() :: [map()]
  def history, do: Bridge.Metrics.Monitor.history()

  @doc """
  The result streams of `Bridge.stream/3` per `{pool, "module.function"}`,
  counted as each ends: `streams`, `errors`, `cancelled` (closed before
  their end), `elements`, `bytes`, `microseconds` (from open to end),
  `elements_per_second` and `bytes_per_second` over that time, and
  `mean_in_flight`: how many more elements had arrived, on average, when the
  consumer took one (near the stream's `:window`: the consumer is the slower
  side; near 0: the worker is).
  """
  @spec streams() :: map()
  def streams, do: Bridge.Metrics.Streams.snapshot()

  @doc "Forgets everything recorded."
  @spec reset() :: :ok
  def reset do
    Collector.sync()
    Bridge.Metrics.Streams.reset()

    if :ets.whereis(@table) != :undefined,
      do: :ets.foldl(fn {_key, ref}, :ok -> Row.zero(ref) end, :ok, @table)

    :ok
  end
end
