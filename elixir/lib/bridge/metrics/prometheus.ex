defmodule Bridge.Metrics.Prometheus do
  @moduledoc """
  `Bridge.Metrics.snapshot/0` in the Prometheus text exposition format
  (version 0.0.4), for a `/metrics` endpoint:

    * `beambridge_calls_total{pool, function}` and
      `beambridge_call_errors_total{pool, function}` — counters;
    * `beambridge_call_fallbacks_total{pool, function}` — argument values that
      went inline because no slice could be had;
    * `beambridge_values_total{pool, function, direction, form}` and
      `beambridge_bytes_total{pool, function, direction, form}` — counters of
      the values and bytes that crossed, per direction and form;
    * `beambridge_call_microseconds{pool, function, part}` — a histogram per
      part of a call (those of `Bridge.Metrics`), with the same `le` ladder
      for every series: 0, then 2^k - 1 up to 2^32 - 1 (bounds of
      `Bridge.Metrics.Histogram`'s buckets), then +Inf;
    * `beambridge_call_bytes{pool, function}` — a histogram of each call's
      bytes.

  ## Examples

      iex> h = Bridge.Metrics.Histogram.add(Bridge.Metrics.Histogram.new(), 5)
      iex> text = Bridge.Metrics.Prometheus.render(%{{Bridge, "m.f"} => %{calls: 1, errors: 0, duration: h}})
      iex> text =~ ~s(beambridge_call_microseconds_bucket{pool="Bridge",function="m.f",part="duration",le="7"} 1)
      true
      iex> text =~ ~s(beambridge_calls_total{pool="Bridge",function="m.f"} 1)
      true
  """

  alias Bridge.Metrics.Histogram

  @parts Bridge.Metrics.Row.parts()

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
      counter(
        "beambridge_call_fallbacks_total",
        "Argument values at or above the threshold that went inline.",
        for({name, e} <- entries, do: {labels(name), Map.get(e, :fallbacks, 0)})
      ),
      counter(
        "beambridge_values_total",
        "Values that crossed, per direction and form.",
        for({labels, c} <- crossed(entries), do: {labels, c.count})
      ),
      counter(
        "beambridge_bytes_total",
        "Bytes of the values that crossed, per direction and form.",
        for({labels, c} <- crossed(entries), do: {labels, c.bytes})
      ),
      "# HELP beambridge_call_microseconds The parts of Bridge.call/3 calls, in microseconds.\n",
      "# TYPE beambridge_call_microseconds histogram\n",
      for {name, e} <- entries, part <- @parts, h = Map.get(e, part), h != nil, h.count > 0 do
        histogram("beambridge_call_microseconds", labels(name) ++ [{"part", "#{part}"}], h)
      end,
      "# HELP beambridge_call_bytes The bytes of each Bridge.call/3 call.\n",
      "# TYPE beambridge_call_bytes histogram\n",
      for {name, e} <- entries, h = Map.get(e, :size), h != nil do
        histogram("beambridge_call_bytes", labels(name), h)
      end
    ])
  end

  defp counter(metric, help, samples) do
    [
      "# HELP #{metric} #{help}\n",
      "# TYPE #{metric} counter\n",
      for({labels, value} <- samples, do: sample(metric, labels, value))
    ]
  end

  defp crossed(entries) do
    for {name, e} <- entries,
        {direction, forms} <- Enum.sort(Map.get(e, :bytes, %{})),
        {form, c} <- Enum.sort(forms),
        do: {labels(name) ++ [{"direction", "#{direction}"}, {"form", "#{form}"}], c}
  end

  # The same ladder of `le` bounds for every series, whatever it holds (a
  # scrape never sees a bound appear): 0, then 2^k - 1 up to 2^32 - 1, bounds
  # of Bridge.Metrics.Histogram's buckets; larger values count only in +Inf.
  @ladder [0 | for(k <- 1..32, do: Bitwise.bsl(1, k) - 1)]

  defp histogram(metric, labels, %{count: count, sum: sum, buckets: buckets}) do
    sorted = buckets |> Enum.map(fn {i, n} -> {Histogram.upper(i), n} end) |> Enum.sort()

    {lines, _} =
      Enum.map_reduce(@ladder, {sorted, 0}, fn le, {rest, seen} ->
        {inside, rest} = Enum.split_while(rest, fn {upper, _} -> upper <= le end)
        seen = seen + Enum.reduce(inside, 0, fn {_, n}, acc -> acc + n end)

        {sample("#{metric}_bucket", labels ++ [{"le", Integer.to_string(le)}], seen),
         {rest, seen}}
      end)

    [
      lines,
      sample("#{metric}_bucket", labels ++ [{"le", "+Inf"}], count),
      sample("#{metric}_sum", labels, sum),
      sample("#{metric}_count", labels, count)
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

  # label values are UTF-8: other bytes (a binary function name) as Latin-1
  defp escape(v) do
    v = to_string(v)
    v = if String.valid?(v), do: v, else: :unicode.characters_to_binary(v, :latin1)

    v
    |> String.replace("\\", "\\\\")
    |> String.replace("\"", "\\\"")
    |> String.replace("\n", "\\n")
  end
end
