defmodule Bridge.Metrics.Alerts do
  @moduledoc """
  Alerts when performance degrades, with what to do about it: evaluated by
  the monitor at each sample (`config :beambridge, monitor_interval:`), sent
  as a `Logger` warning and a `[:beambridge, :alert]` event (measurements
  `%{value, baseline}`, metadata the alert), and kept for
  `Bridge.alerts/0`. An alert is a map: `rule`, `pool`, `function`, `form`,
  `evidence`, `suggestion`, `at` (system time, ms). The same alert (rule,
  pool, function, form) fires at most once per `config :beambridge,
  alert_interval:` milliseconds (default 60,000).

  Each function's calls since the last sample form a window once it has 20
  of them (counting from the first sample that saw the function, or from
  `Bridge.Metrics.reset/0`); the last 12 windows are its rolling baseline. The rules:

    * `:latency` — a form's p99 in the window is above k times the baseline's
      (`config :beambridge, alert_factor:`, default 3; the baseline's p90 while
      it holds fewer than 500 calls, whose p99 is their slowest); the suggestion names
      the part of a call whose mean grew most (the handler, the queue for a
      worker, the transfer, encoding or decoding);
    * `:errors` — the window's error rate is 5% or more and at least twice
      the baseline's;
    * `:fallbacks` — values due a slice went inline since the last sample, per
      reason, with what to change;
    * `:memory` — a pool's arenas, or what callers hold of a worker's, are at
      90% of `:arena_limit`, or the machine's headroom is below one
      `:arena_limit`.
  """

  alias Bridge.Metrics.{Advice, Histogram}

  @min_calls 20
  @min_baseline 50
  @keep 12
  @parts [:queue, :transfer, :handler, :worker_decode, :worker_encode, :encode, :copy, :decode]

  @doc false
  @spec new() :: map()
  def new, do: %{prev: %{}, windows: %{}, fallbacks: nil, fired: %{}}

  @doc false
  # The alerts a new sample raises (before rate limiting) and the state after
  # it: `snapshot` Bridge.Metrics.snapshot/0, `memory` Bridge.Metrics.memory/0.
  @spec evaluate(map(), map(), map(), keyword()) :: {[map()], map()}
  def evaluate(state, snapshot, memory, opts \\ []) do
    k = Keyword.get(opts, :factor, 3)

    {alerts, state} =
      Enum.reduce(snapshot, {[], state}, fn {key, entry}, {alerts, state} ->
        {more, state} = function(state, key, entry, k)
        {more ++ alerts, state}
      end)

    # functions no longer in the metrics (reset) are forgotten
    keys = Map.keys(snapshot)
    state = %{state | prev: Map.take(state.prev, keys), windows: Map.take(state.windows, keys)}
    {fallbacks, state} = fallbacks(state, memory)
    {alerts ++ fallbacks ++ memory(memory), state}
  end

  @doc false
  # Keeps the alerts not fired in the last `interval` ms; returns them and the state.
  @spec limit(map(), [map()], integer(), non_neg_integer()) :: {[map()], map()}
  def limit(state, alerts, now, interval) do
    Enum.reduce(alerts, {[], state}, fn a, {out, state} ->
      key = {a.rule, a.pool, a.function, a.form}

      case state.fired do
        %{^key => at} when now - at < interval ->
          {out, state}

        _ ->
          {[Map.put(a, :at, now) | out], %{state | fired: Map.put(state.fired, key, now)}}
      end
    end)
    |> then(fn {out, state} -> {Enum.reverse(out), state} end)
  end

  ## One function: its window, against its baseline

  defp function(state, key, entry, k) do
    now = cumulative(entry)

    case Map.fetch(state.prev, key) do
      # first seen, or counted afresh (Bridge.Metrics.reset/0): what came
      # before is no window
      {:ok, prev} when now.calls >= prev.calls ->
        window(state, key, now, prev, k)

      _ ->
        windows = Map.delete(state.windows, key)
        {[], %{state | prev: Map.put(state.prev, key, now), windows: windows}}
    end
  end

  defp window(state, key, now, prev, k) do
    if now.calls - prev.calls < @min_calls do
      {[], state}
    else
      window = minus(now, prev)
      baseline = Map.get(state.windows, key, [])
      alerts = if baseline == [], do: [], else: judge(key, window, sum(baseline), k)
      windows = Map.put(state.windows, key, Enum.take([window | baseline], @keep))
      {alerts, %{state | prev: Map.put(state.prev, key, now), windows: windows}}
    end
  end

  defp cumulative(e) do
    %{
      calls: e.calls,
      errors: e.errors,
      parts: Map.new(@parts, fn p -> {p, part(e, p)} end),
      formats: Map.new(e.formats, fn {form, f} -> {form, f.duration} end)
    }
  end

  defp part(e, p) do
    case Map.get(e, p) do
      %{count: c, sum: s} -> {c, s}
      _ -> {0, 0}
    end
  end

  defp empty, do: %{calls: 0, errors: 0, parts: %{}, formats: %{}}

  defp minus(a, b) do
    %{
      calls: a.calls - b.calls,
      errors: a.errors - b.errors,
      parts:
        Map.new(a.parts, fn {p, {c, s}} ->
          {bc, bs} = Map.get(b.parts, p, {0, 0})
          {p, {c - bc, s - bs}}
        end),
      formats:
        Map.new(a.formats, fn {form, h} ->
          {form, Histogram.subtract(h, Map.get(b.formats, form, Histogram.new()))}
        end)
    }
  end

  defp sum(windows) do
    Enum.reduce(windows, empty(), fn w, acc ->
      %{
        calls: acc.calls + w.calls,
        errors: acc.errors + w.errors,
        parts: Map.merge(acc.parts, w.parts, fn _, {c, s}, {d, t} -> {c + d, s + t} end),
        formats: Map.merge(acc.formats, w.formats, fn _, x, y -> Histogram.merge(x, y) end)
      }
    end)
  end

  defp judge({pool, function} = key, window, baseline, k) do
    latency =
      for {form, h} <- window.formats,
          h.count >= @min_calls,
          base = Map.get(baseline.formats, form),
          base != nil and base.count >= @min_baseline,
          p99 = Histogram.quantile(h, 0.99),
          was = Histogram.quantile(base, baseline_q(base.count)),
          p99 > k * max(was, 1) do
        latency(key, form, p99, was, window, baseline)
      end

    rate = window.errors / window.calls
    was = if baseline.calls > 0, do: baseline.errors / baseline.calls, else: 0.0

    errors =
      if rate >= 0.05 and rate >= 2 * was do
        [
          %{
            rule: :errors,
            pool: pool,
            function: function,
            form: nil,
            evidence: %{calls: window.calls, errors: window.errors, rate: rate, baseline: was},
            value: rate,
            baseline: was,
            suggestion:
              "#{function}: #{round(rate * 100)}% of the last #{window.calls} calls failed " <>
                "(#{round(was * 100)}% before): look at the errors it returns"
          }
        ]
      else
        []
      end

    latency ++ errors
  end

  # A baseline's p99 is its largest value until it holds some hundreds of
  # calls: one outlier would hide any slowdown. Until then its p90 stands in.
  defp baseline_q(count) when count >= 500, do: 0.99
  defp baseline_q(_count), do: 0.9

  defp latency({pool, function}, form, p99, was, window, baseline) do
    grown =
      for p <- @parts,
          {c, s} = Map.get(window.parts, p, {0, 0}),
          {bc, bs} = Map.get(baseline.parts, p, {0, 0}),
          c > 0 and bc > 0,
          do: {p, div(s, c), div(bs, bc)}

    why =
      case Enum.max_by(grown, fn {_, now, before} -> now - before end, fn -> nil end) do
        nil ->
          ""

        {p, now, before} ->
          ": #{cause(p)} (#{p} mean #{Advice.time(before)} -> #{Advice.time(now)})"
      end

    %{
      rule: :latency,
      pool: pool,
      function: function,
      form: form,
      evidence: %{calls: window.calls, p99_us: p99, baseline_p99_us: was, parts: grown},
      value: p99,
      baseline: was,
      suggestion:
        "#{function} (#{form}): p99 #{Advice.time(p99)} is #{Float.round(p99 / max(was, 1), 1)}x " <>
          "its baseline of #{Advice.time(was)}#{why}"
    }
  end

  defp cause(:handler), do: "the handler itself got slower; look at what it does or calls"
  defp cause(:queue), do: "calls wait for a free worker; raise :pool_size or spread the load"
  defp cause(:transfer), do: "passing calls and answers got slower; the machine may be loaded"
  defp cause(:worker_decode), do: "Python takes longer to read the arguments; larger values?"
  defp cause(:worker_encode), do: "Python takes longer to write the results; larger results?"
  defp cause(:encode), do: "the arguments take longer to encode; larger or other values?"
  defp cause(:copy), do: "copying arguments into shared memory got slower; larger values?"
  defp cause(:decode), do: "the results take longer to decode; larger or other values?"

  ## The node's fallbacks and memory

  @fallback_advice %{
    too_large: "values are past :arena_limit: raise it or send smaller values",
    arena_full:
      "the arenas are full: results held long or values in flight at once; raise :arena_limit",
    no_space: "the machine or the cgroup has no memory for a new arena; free memory",
    no_tickets: "a worker's 65,536 lease tickets are in use: drop or copy held results"
  }

  defp fallbacks(state, memory) do
    now = Map.get(memory, :fallbacks, %{})
    before = state.fallbacks || now

    alerts =
      for {reason, n} <- now,
          d = n - Map.get(before, reason, 0),
          d > 0 do
        %{
          rule: :fallbacks,
          pool: nil,
          function: nil,
          form: reason,
          evidence: %{reason: reason, values: d},
          value: d,
          baseline: 0,
          suggestion: "#{d} value(s) went inline (#{reason}): #{@fallback_advice[reason]}"
        }
      end

    {alerts, %{state | fallbacks: now}}
  end

  defp memory(memory) do
    headroom = Map.get(memory, :headroom, 0)

    Enum.flat_map(Map.get(memory, :pools, %{}), fn {pool, p} ->
      limit = p.arena_limit

      full =
        for {what, used} <- [{"this node's arenas", p.used_bytes} | worker_held(p)],
            limit > 0 and used * 10 >= limit * 9 do
          memory_alert(
            pool,
            what,
            used,
            limit,
            headroom,
            "#{inspect(pool)}: #{what} use #{Advice.size(used)} of :arena_limit " <>
              "#{Advice.size(limit)}; raise it, or drop results sooner"
          )
        end

      # only a pool that uses shared memory is short of it
      low =
        if limit > 0 and headroom < limit and p.arena_bytes + p.worker_arena_bytes > 0,
          do: [
            memory_alert(
              pool,
              "headroom",
              headroom,
              limit,
              headroom,
              "#{inspect(pool)}: the machine has #{Advice.size(headroom)} left, less than " <>
                "one :arena_limit (#{Advice.size(limit)}); lower :arena_limit or free memory"
            )
          ],
          else: []

      full ++ low
    end)
  end

  defp memory_alert(pool, what, used, limit, headroom, suggestion) do
    %{
      rule: :memory,
      pool: pool,
      function: nil,
      form: what,
      evidence: %{what: what, used: used, arena_limit: limit, headroom: headroom},
      value: used,
      baseline: limit,
      suggestion: suggestion
    }
  end

  defp worker_held(p),
    do: for({id, w} <- p.workers, do: {"results held of worker #{id}", w.held_bytes})
end
