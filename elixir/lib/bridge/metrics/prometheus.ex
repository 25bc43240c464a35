defmodule Bridge.Metrics.Prometheus do
  @moduledoc """
  `Bridge.Metrics.snapshot/0` in the Prometheus text exposition format
  (version 0.0.4), for a `/metrics` endpoint:

    * `beambridge_calls_total{pool, function}` and
      `beambridge_call_errors_total{pool, function}` — counters;
    * `beambridge_call_microseconds{pool, function, part}` — a histogram per
      part of a call (`duration`, `encode`, `wait`, `decode`), its buckets'
      `le` the upper bounds of `Bridge.Metrics.Histogram`'s buckets.

  ## Examples

      iex> h = Bridge.Metrics.Histogram.add(Bridge.Metrics.Histogram.new(), 5)
      iex> text = Bridge.Metrics.Prometheus.render(%{{Bridge, "m.f"} => %{calls: 1, errors: 0, duration: h}})
      iex> text =~ ~s(beambridge_call_microseconds_bucket{pool="Bridge",function="m.f",part="duration",le="5"} 1)
      true
      iex> text =~ ~s(beambridge_calls_total{pool="Bridge",function="m.f"} 1)
      true
  """

  alias Bridge.Metrics.Histogram

  @parts [:duration, :encode, :wait, :decode]

  @doc "The snapshot as exposition text (every line ends with a newline)."
  @spec render(Bridge.Metrics.snapshot()) :: String.t()
  def render(snapshot) do
    entries = Enum.sort_by(snapshot, fn {{pool, function}, _} -> {inspect(pool), function} end)

    IO.iodata_to_binary([
      "# HELP beambridge_calls_total Bridge.call/3 calls made.\n",
      "# TYPE beambridge_calls_total counter\n",
      for({name, e} <- entries, do: sample("beambridge_calls_total", labels(name), e.calls)),
      "# HELP beambridge_call_errors_total Bridge.call/3 calls that returned an error.\n",
      "# TYPE beambridge_call_errors_total counter\n",
      for(
        {name, e} <- entries,
        do: sample("beambridge_call_errors_total", labels(name), e.errors)
      ),
      "# HELP beambridge_call_microseconds The parts of Bridge.call/3 calls, in microseconds.\n",
      "# TYPE beambridge_call_microseconds histogram\n",
      for {name, e} <- entries, part <- @parts, h = Map.get(e, part), h != nil do
        histogram(labels(name) ++ [{"part", Atom.to_string(part)}], h)
      end
    ])
  end

  defp histogram(labels, %{count: count, sum: sum, buckets: buckets}) do
    {lines, _} =
      buckets
      |> Enum.sort()
      |> Enum.map_reduce(0, fn {i, n}, seen ->
        le = Integer.to_string(Histogram.upper(i))

        {sample("beambridge_call_microseconds_bucket", labels ++ [{"le", le}], seen + n),
         seen + n}
      end)

    [
      lines,
      sample("beambridge_call_microseconds_bucket", labels ++ [{"le", "+Inf"}], count),
      sample("beambridge_call_microseconds_sum", labels, sum),
      sample("beambridge_call_microseconds_count", labels, count)
    ]
  end

  defp labels({pool, function}), do: [{"pool", pool_name(pool)}, {"function", function}]

  defp pool_name(pool) when is_atom(pool),
    do: pool |> Atom.to_string() |> String.trim_leading("Elixir.")

  defp pool_name(pool), do: inspect(pool)

  defp sample(metric, labels, value) do
    pairs = Enum.map_intersperse(labels, ",", fn {k, v} -> [k, "=\"", escape(v), ?"] end)
    [metric, ?{, pairs, "} ", Integer.to_string(value), ?\n]
  end

  defp escape(v) do
    v
    |> to_string()
    |> String.replace("\\", "\\\\")
    |> String.replace("\"", "\\\"")
    |> String.replace("\n", "\\n")
  end
end
