defmodule Bridge.Dashboard.Data do
  @moduledoc """
  What the dashboard draws, as one map (`/data.json`):

    * `functions` — per pool and function: calls, errors, fallbacks, p50 and
      p99 of the duration (µs), the mean of each part of a call (µs);
    * `latency` — per pool, function, form and size class (`size`, the
      class's floor in bytes): calls and mean duration (µs);
    * `memory` — the monitor's samples over time (`Bridge.Metrics.history/0`)
      and one taken now: `at` (ms), `headroom`, per pool its bytes;
    * `streams`, `recommendations`, `alerts`.
  """

  alias Bridge.Metrics
  alias Bridge.Metrics.Histogram

  @doc "The dashboard's data now."
  @spec all() :: map()
  def all do
    snapshot = Metrics.snapshot()
    memory = Metrics.memory()

    %{
      generated_at: System.system_time(:millisecond),
      functions: functions(snapshot),
      latency: latency(snapshot),
      memory: Metrics.history() ++ [now(memory)],
      headroom: memory.headroom,
      fallbacks: memory.fallbacks,
      streams:
        for(
          {{pool, f}, s} <- Enum.sort(Metrics.streams()),
          do: Map.merge(s, %{pool: pool, function: f})
        ),
      recommendations:
        for(
          r <- Bridge.recommendations(),
          do: Map.take(r, [:rule, :pool, :function, :suggestion, :estimated_gain])
        ),
      alerts:
        for(
          a <- Bridge.alerts(),
          do: Map.take(a, [:rule, :pool, :function, :form, :suggestion, :at])
        )
    }
  end

  defp functions(snapshot) do
    for {{pool, function}, e} <- Enum.sort(snapshot) do
      parts =
        for p <- Metrics.Row.parts(),
            h = e[p],
            h.count > 0,
            into: %{},
            do: {p, div(h.sum, h.count)}

      %{
        pool: pool,
        function: function,
        calls: e.calls,
        errors: e.errors,
        fallbacks: e.fallbacks,
        p50_us: Histogram.quantile(e.duration, 0.5),
        p99_us: Histogram.quantile(e.duration, 0.99),
        parts: parts
      }
    end
  end

  defp latency(snapshot) do
    for {{pool, function}, e} <- Enum.sort(snapshot),
        {{form, size}, c} <- Enum.sort(e.sizes),
        c.calls > 0 do
      %{
        pool: pool,
        function: function,
        form: form,
        size: size,
        calls: c.calls,
        mean_us: div(c.duration_sum, c.calls)
      }
    end
  end

  defp now(memory), do: Bridge.Metrics.Memory.sample(memory)
end
