defmodule Bridge.Metrics do
  @moduledoc """
  What the bridge's calls cost, kept in this node as they happen and read with
  `snapshot/0`: per pool and function, the number of calls and of errors, and
  log-bucketed histograms (`Bridge.Metrics.Histogram`) of each part of a call
  in microseconds: `duration` (the whole call), `encode` (the arguments into
  shared memory or the request), `wait` (from the request's send to its
  answer: queue, transfer and the handler) and `decode` (the answer read).

  Recording costs an ETS lookup and ten atomic additions a call; `config
  :beambridge, metrics: false` turns it off for the node (read at start).

  ## Examples

      Bridge.call({:arith, :add}, [1, 2])
      %{{Bridge, "arith.add"} => %{calls: 1, errors: 0, duration: h}} = Bridge.Metrics.snapshot()
      Bridge.Metrics.Histogram.quantile(h, 0.99)   #=> microseconds
  """

  alias Bridge.Metrics.Histogram

  @table __MODULE__
  @ops [:duration, :encode, :wait, :decode]
  # buckets 0..127: values from 2^32 µs (71 minutes) on share the last one
  @buckets 128
  # the counters of a function: calls, errors, then per part of a call (@ops
  # order) its sum and its buckets (positions count from 1)
  @width 1 + @buckets
  @calls_pos 1
  @errors_pos 2
  @sum_pos 3
  @size 2 + length(@ops) * @width

  @typedoc "Per `{pool, \"module.function\"}`: counts and one histogram per part of a call."
  @type snapshot :: %{
          {atom(), String.t()} => %{
            calls: non_neg_integer(),
            errors: non_neg_integer(),
            duration: Histogram.t(),
            encode: Histogram.t(),
            wait: Histogram.t(),
            decode: Histogram.t()
          }
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
  # Records one call: `timings` in native time units (Bridge.Call). Each pool
  # and function has an array of counters (:counters): the calls, the errors
  # and, for each part of a call, its sum and its buckets; a call adds to ten
  # of them, without a lock.
  @spec record(atom(), atom() | binary(), atom() | binary(), map(), :ok | :error) :: :ok
  def record(pool, module, function, %{duration: d, encode: e, wait: w, decode: x}, result) do
    ref = counters({pool, module, function})
    :counters.add(ref, @calls_pos, 1)
    if result == :error, do: :counters.add(ref, @errors_pos, 1)
    add(ref, 0, us(d))
    add(ref, 1, us(e))
    add(ref, 2, us(w))
    add(ref, 3, us(x))
  rescue
    ArgumentError -> :ok
  end

  defp add(ref, k, us) do
    at = @sum_pos + k * @width
    :counters.add(ref, at, us)
    :counters.add(ref, at + 1 + min(Histogram.bucket(us), @buckets - 1), 1)
  end

  defp us(native) when native > 0, do: :erlang.convert_time_unit(native, :native, :microsecond)
  defp us(_native), do: 0

  defp counters(key) do
    case :ets.lookup(@table, key) do
      [{_, ref}] ->
        ref

      [] ->
        ref = :counters.new(@size, [])
        if :ets.insert_new(@table, {key, ref}), do: ref, else: counters(key)
    end
  end

  @doc """
  Every pool's and function's counts and histograms since the node started (or
  since `reset/0`).
  """
  @spec snapshot() :: snapshot()
  def snapshot do
    rows = if :ets.whereis(@table) == :undefined, do: [], else: :ets.tab2list(@table)

    Enum.reduce(rows, %{}, fn {{pool, module, function}, ref}, acc ->
      name = {pool, "#{module}.#{function}"}
      calls = :counters.get(ref, @calls_pos)

      parts =
        for {op, k} <- Enum.with_index(@ops), into: %{} do
          {op, histogram(ref, calls, @sum_pos + k * @width)}
        end

      entry = Map.merge(parts, %{calls: calls, errors: :counters.get(ref, @errors_pos)})
      Map.update(acc, name, entry, &merge_entry(&1, entry))
    end)
  end

  # An atom and a binary naming the same function are one entry.
  defp merge_entry(a, b) do
    parts = Map.new(@ops, &{&1, Histogram.merge(a[&1], b[&1])})
    Map.merge(parts, %{calls: a.calls + b.calls, errors: a.errors + b.errors})
  end

  @doc "Forgets everything recorded."
  @spec reset() :: :ok
  def reset do
    if :ets.whereis(@table) != :undefined, do: :ets.delete_all_objects(@table)
    :ok
  end

  # The histogram whose count is at 0-based position `at` of `row`.
  # The histogram whose sum is at position `at` of a function's counters.
  defp histogram(ref, calls, at) do
    buckets =
      for i <- 0..(@buckets - 1), (n = :counters.get(ref, at + 1 + i)) > 0, into: %{}, do: {i, n}

    %{count: calls, sum: :counters.get(ref, at), buckets: buckets}
  end
end
