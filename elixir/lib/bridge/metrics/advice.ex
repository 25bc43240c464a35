defmodule Bridge.Metrics.Advice do
  @moduledoc """
  Rules over the metrics that give concrete advice, read with
  `Bridge.recommendations/0`. Each recommendation is a map: `rule`, `pool`,
  `function` (`"module.function"`, or nil for the pool), `evidence` (the
  figures it rests on), `suggestion` (a sentence to act on) and
  `estimated_gain` (`%{us_per_call: n}` or `%{bytes: n}`, what following it
  should save, from the figures measured here).

  The rules:

    * `:buffer` — a function receives large binaries (1 MiB and more on
      average, in slices) as `bytes`: Python copies each out of shared memory;
      `Bridge.Buffer` hands the handler a view instead. Gain: the worker's
      measured time reading the arguments.
    * `:held_results` — callers hold many result slices of a pool's workers
      (64 and more, or a quarter of the workers' arenas): those arenas cannot
      be reused. Names the functions whose results came in slices.
    * `:threshold` — calls with values of the same size class (one per power
      of four) went inline for some functions and through slices for others on
      this node, and one way was at least 10% faster: a pool whose calls take
      the slower way should move its `:threshold` past its values. Gain: the
      difference of the two mean durations.
  """

  alias Bridge.Config

  @min_calls 20
  @buffer_bytes 1024 * 1024

  @doc false
  # The recommendations for a metrics snapshot, a memory snapshot and the
  # pools' thresholds (pool => bytes).
  @spec from(map(), map(), map()) :: [map()]
  def from(snapshot, memory, thresholds) do
    buffer(snapshot) ++ held(snapshot, memory) ++ threshold(snapshot, thresholds)
  end

  @doc false
  @spec thresholds() :: map()
  def thresholds do
    for {{Config, name}, %Config{threshold: t}} <- :persistent_term.get(),
        into: %{},
        do: {name, t}
  end

  ## :buffer

  defp buffer(snapshot) do
    for {{pool, function}, e} <- snapshot,
        %{count: n, bytes: b} <- [get_in(e, [:bytes, :to_python, :raw_slice])],
        n >= 3 and div(b, n) >= @buffer_bytes,
        timed = e.worker_decode.count,
        timed > 0,
        gain = div(e.worker_decode.sum, timed),
        gain > 0 do
      mean = div(b, n)

      %{
        rule: :buffer,
        pool: pool,
        function: function,
        evidence: %{binaries: n, mean_bytes: mean, worker_decode_us: gain},
        suggestion:
          "#{function} receives #{size(mean)} binaries as bytes: wrap them in " <>
            "Bridge.Buffer to save one copy (about #{time(gain)} a call)",
        estimated_gain: %{us_per_call: gain}
      }
    end
  end

  ## :held_results

  defp held(snapshot, memory) do
    for {pool, p} <- Map.get(memory, :pools, %{}),
        p.held_slices >= 64 or
          (p.worker_arena_bytes > 0 and p.held_bytes * 4 >= p.worker_arena_bytes and
             p.held_slices > 0) do
      makers =
        for {{^pool, function}, e} <- snapshot,
            bytes = sliced(e.bytes[:from_python] || %{}),
            bytes > 0 do
          {function, bytes}
        end
        |> Enum.sort_by(&elem(&1, 1), :desc)
        |> Enum.map(&elem(&1, 0))
        |> Enum.take(3)

      who = if makers == [], do: "results", else: "results of #{Enum.join(makers, ", ")}"

      %{
        rule: :held_results,
        pool: pool,
        function: List.first(makers),
        evidence: %{
          held_slices: p.held_slices,
          held_bytes: p.held_bytes,
          worker_arena_bytes: p.worker_arena_bytes,
          functions: makers
        },
        suggestion:
          "#{who} are held long: #{p.held_slices} leased slices (#{size(p.held_bytes)}) keep " <>
            "the workers' arenas; copy what you keep (:binary.copy/1) or drop results sooner",
        estimated_gain: %{bytes: p.held_bytes}
      }
    end
  end

  defp sliced(forms) do
    for {form, %{bytes: b}} <- forms,
        String.ends_with?(Atom.to_string(form), "_slice"),
        reduce: 0,
        do: (acc -> acc + b)
  end

  ## :threshold

  # Calls whose values (of the form that carried most of their bytes) are of
  # the same size class went inline for some functions and through slices for
  # others, over every pool of the node: compare their mean durations.
  defp threshold(snapshot, thresholds) do
    cells =
      for {{pool, function}, e} <- snapshot,
          {form, %{calls: calls, duration: d}} <- e.formats,
          calls >= @min_calls,
          value = value_mean(e, form),
          value >= 1024,
          do: %{
            pool: pool,
            function: function,
            form: form,
            value: value,
            calls: calls,
            share: round(100 * calls / max(e.calls, 1)),
            mean: div(d.sum, calls),
            class: Bridge.Metrics.Row.size_class(value)
          }

    classes =
      cells
      |> Enum.group_by(& &1.class)
      |> Map.new(fn {class, cs} ->
        {slices, inline} = Enum.split_with(cs, &slice?(&1.form))
        {class, %{inline: mean(inline), slice: mean(slices)}}
      end)

    for c <- cells,
        t = Map.get(thresholds, c.pool),
        is_integer(t),
        %{inline: {ni, inline}, slice: {ns, slice}} = classes[c.class],
        ni > 0 and ns > 0,
        advice = move(slice?(c.form), inline, slice, c.value, t),
        advice != nil do
      {to, gain, way} = advice

      %{
        rule: :threshold,
        pool: c.pool,
        function: c.function,
        evidence: %{
          calls: c.calls,
          share_percent: c.share,
          mean_value_bytes: c.value,
          inline_mean_us: inline,
          slice_mean_us: slice,
          threshold: t,
          suggested_threshold: to
        },
        suggestion:
          "#{c.share}% of the calls of #{c.function} carry values of about #{size(c.value)} " <>
            "#{way}: threshold #{size(to)} would save about #{time(gain)} each " <>
            "(#{inspect(c.pool)} has #{size(t)}; calls with such values took " <>
            "#{time(inline)} inline and #{time(slice)} through slices here)",
        estimated_gain: %{us_per_call: gain}
      }
    end
  end

  defp slice?(form), do: form |> Atom.to_string() |> String.ends_with?("_slice")

  # Inline calls where slices were 10% faster: lower the threshold to a power
  # of two at or below their values; slice calls where inline was: raise it
  # above them.
  defp move(false, inline, slice, value, t) when slice * 10 < inline * 9 do
    to = pow2_floor(value)
    if to < t, do: {to, inline - slice, "inline"}
  end

  defp move(true, inline, slice, value, t) when inline * 10 < slice * 9 do
    to = 2 * pow2_floor(value)
    if to > t, do: {to, slice - inline, "through slices"}
  end

  defp move(_slice?, _inline, _slice, _value, _t), do: nil

  defp pow2_floor(v), do: Integer.pow(2, trunc(:math.log2(max(v, 1))))

  # The mean size of a function's values in `form` (either way).
  defp value_mean(e, form) do
    {n, b} =
      for {_direction, forms} <- e.bytes,
          %{count: c, bytes: b} <- [forms[form]],
          reduce: {0, 0} do
        {n, s} -> {n + c, s + b}
      end

    if n > 0, do: div(b, n), else: 0
  end

  defp mean(cells) do
    {n, sum} = Enum.reduce(cells, {0, 0}, fn c, {n, s} -> {n + c.calls, s + c.mean * c.calls} end)
    {n, if(n > 0, do: div(sum, n), else: 0)}
  end

  ## Words

  @doc false
  @spec size(non_neg_integer()) :: String.t()
  def size(b) when b >= 1024 * 1024, do: "#{Float.round(b / (1024 * 1024), 1)} MiB"
  def size(b) when b >= 1024, do: "#{div(b, 1024)} KiB"
  def size(b), do: "#{b} B"

  @doc false
  @spec time(non_neg_integer()) :: String.t()
  def time(us) when us >= 1000, do: "#{Float.round(us / 1000, 1)} ms"
  def time(us), do: "#{us} µs"
end
