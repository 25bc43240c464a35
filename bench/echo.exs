# Echo round trips for bench/run.exs (loaded by it). Every figure a row compares is
# sampled interleaved with its baseline, in blocks: the machine drifts between fast and
# slow phases, and a ratio of two medians taken minutes apart measures the drift. (The
# plain figure, without the caller's GC, is taken right after, on its own.)
#
#   * rows/4: Bridge.call with a binary (plain: the caller keeps no habit; gc: the
#     caller garbage-collects after each call, as a request process that ends does)
#     and with a Bridge.Buffer, against ETF over a Port (erlang-py, ErlPort-style)
#   * sweep/1: every payload inline vs every payload in a slice (threshold 1)
#   * untrusted/1: the default pool vs `untrusted: true` (sealed result objects)
#   * spin/3: small echoes with the worker polling for the next call (the default
#     `spin_us`) vs sleeping at once (`spin_us: 0`), beside ETF over a Port
defmodule BenchEcho do
  import Bitwise

  @kib 1024
  @mib 1024 * 1024
  @block 10

  # ---- echo against ETF over a Port ------------------------------------------------------

  def rows(sizes, memcpy, pool, python) do
    BenchEcho.Port.with_port(python, ["bench/etf_echo.py"], fn port ->
      Enum.map(sizes, &row(&1, memcpy, pool, port))
    end)
  end

  defp row(size, memcpy, pool, port) do
    payload = payload(size)
    buffer = Bridge.Buffer.new(payload)

    series = %{
      "bridge_us" => fn -> echo(pool, payload, :gc) end,
      "bridge_buffer_us" => fn -> echo(pool, buffer, :gc) end,
      "etf_port_us" => fn -> etf_echo(port, payload) end
    }

    # From 16 MiB the ETF baseline's block takes seconds, longer than an arena may
    # stay idle before it is dropped: each block then starts with one untimed call,
    # so the figures are those of a bridge in use, not of arenas being made again.
    warm = size >= 16 * @mib
    times = interleaved(series, reps(size), warm)
    # Without the habit results pile up until the caller's next GC and hold their
    # slices meanwhile: measured on its own, after the others, so the garbage it
    # leaves does not land in their figures.
    plain =
      interleaved(%{"bridge_plain_us" => fn -> echo(pool, payload, :plain) end}, reps(size), warm)

    :erlang.garbage_collect()
    times = Map.merge(times, plain)
    two_memcpy = 2 * Map.fetch!(memcpy, size)
    etf = times["etf_port_us"]

    row =
      Map.merge(times, %{
        "size" => size,
        "two_memcpy_us" => two_memcpy,
        "speedup_vs_etf_port" => ratio(etf, times["bridge_us"]),
        "plain_speedup_vs_etf_port" => ratio(etf, times["bridge_plain_us"]),
        "buffer_speedup_vs_etf_port" => ratio(etf, times["bridge_buffer_us"]),
        "bridge_over_two_memcpy" => ratio(times["bridge_us"], two_memcpy),
        "buffer_over_two_memcpy" => ratio(times["bridge_buffer_us"], two_memcpy)
      })

    IO.puts(
      "  #{human(size)}: bridge #{fmt_us(times["bridge_us"])} " <>
        "(no GC #{fmt_us(times["bridge_plain_us"])}, Buffer #{fmt_us(times["bridge_buffer_us"])}), " <>
        "ETF over Port #{fmt_us(etf)}, 2x memcpy #{fmt_us(two_memcpy)}"
    )

    :erlang.garbage_collect()
    row
  end

  # One echo, checked. `:gc`: the caller then lets go of the result, as a request
  # process does when it ends (a result in a slice holds a lease until its binary is
  # garbage-collected). `:plain`: no habit at all.
  def echo(pool, arg, habit) do
    expected = with %Bridge.Buffer{data: data} <- arg, do: data
    {:ok, ^expected} = Bridge.call({:bench_handlers, :echo}, [arg], pool: pool, timeout: 300_000)
    if habit == :gc, do: :erlang.garbage_collect()
    :ok
  end

  # One ETF echo over a Port to bench/etf_echo.py, checked.
  def etf_echo(port, payload) do
    send(port, {self(), {:command, :erlang.term_to_binary({:echo, payload})}})

    receive do
      {^port, {:data, data}} -> {:ok, ^payload} = :erlang.binary_to_term(data)
    after
      300_000 -> raise "ETF echo baseline timed out"
    end
  end

  # ---- where slices start to pay ---------------------------------------------------------

  # The same echo with every payload inline (threshold above it) and every payload in a
  # slice (threshold 1), to place the default threshold where slices start to win.
  def sweep(sizes, python, handlers) do
    with_pools([inline: [threshold: 1 <<< 40], slice: [threshold: 1]], python, handlers, fn
      pools ->
        for size <- sizes do
          payload = payload(size)

          times = interleaved(pool_series(pools, payload, :gc), 300)
          row = Map.merge(times, %{"size" => size})
          Map.put(row, "slice_over_inline", ratio(times["slice_us"], times["inline_us"]))
        end
    end)
  end

  # ---- the cost of untrusted: true ---------------------------------------------------------

  def untrusted(sizes, python, handlers) do
    with_pools([default: [], untrusted: [untrusted: true]], python, handlers, fn pools ->
      for size <- sizes do
        payload = payload(size)

        times = interleaved(pool_series(pools, payload, :gc), reps(size))

        Map.merge(times, %{
          "size" => size,
          "untrusted_over_default" => ratio(times["untrusted_us"], times["default_us"])
        })
      end
    end)
  end

  # ---- waiting for the next call ---------------------------------------------------------

  # Small echoes from a worker that polls for the next call after each answer (the
  # default `spin_us`) and from one that goes to sleep at once (`spin_us: 0`), with
  # ETF over a Port beside them.
  def spin(sizes, python, handlers) do
    with_pools([spin: [], no_spin: [spin_us: 0]], python, handlers, fn pools ->
      BenchEcho.Port.with_port(python, ["bench/etf_echo.py"], fn port ->
        for size <- sizes do
          payload = payload(size)

          series =
            pools
            |> pool_series(payload, :plain)
            |> Map.put("etf_port_us", fn -> etf_echo(port, payload) end)

          times = interleaved(series, 2_000)

          Map.merge(times, %{
            "size" => size,
            "no_spin_over_spin" => ratio(times["no_spin_us"], times["spin_us"]),
            "etf_port_over_spin" => ratio(times["etf_port_us"], times["spin_us"]),
            "etf_port_over_no_spin" => ratio(times["etf_port_us"], times["no_spin_us"])
          })
        end
      end)
    end)
  end

  # One echo series per pool of `with_pools/4`, keyed "<mode>_us".
  defp pool_series(pools, payload, habit) do
    for {mode, name} <- pools, into: %{}, do: {"#{mode}_us", fn -> echo(name, payload, habit) end}
  end

  defp with_pools(modes, python, handlers, fun) do
    pools =
      for {mode, opts} <- modes do
        name = :"BenchEcho_#{mode}"

        {:ok, sup} =
          Bridge.start_link(
            [name: name, python: python, python_path: [handlers], pool_size: 1] ++
              [timeout: 300_000] ++ opts
          )

        {mode, name, sup}
      end

    try do
      fun.(Enum.map(pools, fn {mode, name, _} -> {mode, name} end))
    after
      Enum.each(pools, fn {_, _, sup} -> Supervisor.stop(sup) end)
    end
  end

  # ---- sampling ----------------------------------------------------------------------------

  # Medians (µs) of `reps` samples of each series, taken in alternating blocks of
  # @block (warm-up: one untimed block of each first; with `warm`, also one untimed
  # call before each block).
  def interleaved(series, reps, warm \\ false) do
    block = min(@block, reps)
    Enum.each(series, fn {_, f} -> Enum.each(1..block, fn _ -> f.() end) end)

    samples =
      Enum.reduce(1..max(div(reps, block), 1), %{}, fn _, acc ->
        Enum.reduce(series, acc, fn {key, f}, acc ->
          if warm, do: f.()
          times = for _ <- 1..block, do: elem(:timer.tc(f), 0)
          Map.update(acc, key, times, &(times ++ &1))
        end)
      end)

    Map.new(samples, fn {key, times} -> {key, percentile(times, 50)} end)
  end

  def percentile(samples, p) do
    sorted = Enum.sort(samples)
    Enum.at(sorted, min(length(sorted) - 1, div(length(sorted) * p, 100)))
  end

  def ratio(a, b) when is_number(a) and is_number(b) and b > 0, do: Float.round(a / b, 2)
  def ratio(_, _), do: nil

  def payload(size), do: :binary.copy(<<0, 1, 2, 3, 4, 5, 6, 7>>, div(size, 8))

  def reps(size) when size <= 256 * @kib, do: 200
  def reps(size) when size <= 4 * @mib, do: 40
  def reps(size) when size <= 64 * @mib, do: 10
  def reps(_size), do: 4

  def human(size) when size >= @mib, do: "#{div(size, @mib)} MiB"
  def human(size), do: "#{div(size, @kib)} KiB"

  def fmt_us(us) when us >= 1000, do: "#{Float.round(us / 1000, 1)} ms"
  def fmt_us(us), do: "#{round(us)} µs"
end

defmodule BenchEcho.Port do
  # A Python script on a Port speaking {packet, 4} on fds 3 and 4.
  def with_port(python, args, fun) do
    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        {:packet, 4},
        :nouse_stdio,
        :exit_status,
        args: args
      ])

    try do
      fun.(port)
    after
      Port.close(port)
    end
  end
end
