# The benchmark harness (the README's main job): `make bench`, or
#   MIX_ENV=test mix run bench/run.exs [--quick]
#
# Every figure is measured in this one run, next to its baseline (sampled interleaved
# with it, bench/echo.exs), and reported as a ratio: timings on a shared 2-core machine
# are noisy, ratios much less so.
#
#   * round trip of an echo call, 1 KiB .. 256 MiB: Bridge.call vs the same payload as
#     ETF over a Port to a Python process decoding it with erlang-py (ErlPort-style),
#     and vs two memcpys of the payload (NumPy, warm buffers); with and without the
#     caller garbage-collecting after each call
#   * every payload inline vs every payload in a slice (where slices start to pay),
#     the default pool vs `untrusted: true`, and a worker that polls for the next call
#     vs one that sleeps at once (`spin_us`)
#   * a small call (two integers): Bridge.call p50 vs a raw Port round trip of a
#     20-byte frame with no decoding at all (the floor), and with Bridge.Metrics
#     recording (the default) vs not
#   * a CPU-bound handler: throughput of a pool of 2 vs a pool of 1
#   * 1M-row table Python -> Elixir as Arrow vs an ETF list of maps; 1 GiB vs 1 KiB
#   * 1M rows of list<struct> + fixed_size_list<float32, 768> decoded by Bridge.Arrow vs
#     the same data as an ETF list of maps (bench/nested.exs)
#     tensor open; lists and rows as ETF vs packed/records (bench/formats.exs)
#   * typed schemas: 1M PerformanceMetrics and 1M ModelConfig values each way as SSZ
#     lists against an ETF list of maps (bench/schemas.exs)
#   * a 64 MiB call to another node (a :peer on localhost) with each :compress
#     setting, on compressible and incompressible data (bench/cluster.exs)
#   * streams of 4 MiB elements, 1 GiB and 16 GiB each way, against memcpy, with peak
#     RSS of both processes and peak shared memory (bench/streams.exs)
#   * callbacks into Elixir: a small call with one callback vs without, 1,000
#     callbacks in a call, 64 MiB each way through a callback vs an echo call
#     (bench/callbacks.exs)
#   * each ratio against the same ratio of transport 1 (bench/results/v1.json, a full
#     run of the last transport-1 commit on this kind of machine)
#
# Writes bench/results/latest.json and bench/results/latest.png.
# Format decisions are logged at debug level, one line per argument: measure the
# bridge, not the console.
Logger.configure(level: :info)

defmodule Bench do
  @python Path.expand(".venv/bin/python")
  @handlers Path.expand("bench/handlers")
  @kib 1024
  @mib 1024 * 1024

  def main(argv) do
    quick? = "--quick" in argv

    sizes =
      if quick?,
        do: [@kib, 64 * @kib, @mib, 64 * @mib],
        else: [
          @kib,
          16 * @kib,
          64 * @kib,
          256 * @kib,
          @mib,
          4 * @mib,
          16 * @mib,
          64 * @mib,
          256 * @mib
        ]

    info(
      "beambridge benchmark — #{System.schedulers_online()} cores, OTP #{System.otp_release()}, Elixir #{System.version()}"
    )

    memcpy = memcpy_times(sizes)

    {:ok, sup} =
      Bridge.start_link(
        name: BenchBridge,
        python: @python,
        # protocol/: the seed's typed schemas (vectorgen/ssz.py) for bench/schemas.exs
        python_path: [@handlers, Path.expand("protocol")],
        pool_size: 1,
        timeout: 120_000,
        # the functions bench/callbacks.exs's handlers call back
        callbacks: BenchCallbacks.allowed()
      )

    info("Echo round trips (interleaved with ETF over a Port)")
    echo_rows = BenchEcho.rows(sizes, memcpy, BenchBridge, @python)
    small = small_call()
    tables = table_transfer(if(quick?, do: 100_000, else: 1_000_000))
    info("Nested Arrow table into Elixir (3 GiB: about a minute)")
    nested = BenchNested.run(@python, quick?)
    formats = BenchFormats.run(BenchBridge, quick?)
    info("Typed schemas in batches (1M values each way)")
    schemas = BenchSchemas.run(BenchBridge, quick?)
    info("A 64 MiB call to another node, each :compress setting (about three minutes)")
    cluster = BenchCluster.run(@python, quick?)
    info("Streams (16 GiB each way: about a minute)")
    streams = BenchStreams.run(BenchBridge, @python, quick?)
    info("Callbacks into Elixir")
    callbacks = BenchCallbacks.run(BenchBridge, quick?)
    Supervisor.stop(sup)

    throughput = pool_throughput(if(quick?, do: 8, else: 24))

    tensor_open = tensor_open()

    sweep_sizes =
      if quick?,
        do: [16 * @kib, 64 * @kib],
        else: [4 * @kib, 16 * @kib, 32 * @kib, 64 * @kib, 128 * @kib, 256 * @kib]

    sweep = BenchEcho.sweep(sweep_sizes, @python, @handlers)
    untrusted = BenchEcho.untrusted([@mib, 64 * @mib], @python, @handlers)
    spin = BenchEcho.spin([@kib, 16 * @kib], @python, @handlers)

    results = %{
      "machine" => %{
        "cores" => System.schedulers_online(),
        "otp" => System.otp_release(),
        "elixir" => System.version()
      },
      "echo" => echo_rows,
      "small_call" => small,
      "throughput" => throughput,
      "threshold_sweep" => sweep,
      "untrusted" => untrusted,
      "spin" => spin,
      "tensor_open" => tensor_open,
      "tables" => tables,
      "nested" => nested,
      "formats" => formats,
      "schemas" => schemas,
      "streams" => streams,
      "cluster" => cluster,
      "callbacks" => callbacks
    }

    print_table(echo_rows, small, throughput)
    print_sweep(sweep)
    print_untrusted(untrusted)
    print_spin(spin)
    print_tensor_open(tensor_open)
    print_tables(tables)
    BenchNested.print(nested)
    BenchFormats.print(formats)
    BenchSchemas.print(schemas)
    BenchStreams.print(streams)
    BenchCluster.print(cluster)
    BenchCallbacks.print(callbacks)
    print_targets(echo_rows, small, throughput, sweep)
    BenchStreams.print_targets(streams)
    File.mkdir_p!("bench/results")
    File.write!("bench/results/latest.json", Bench.JSON.encode(results) <> "\n")

    {out, status} =
      System.cmd(
        @python,
        ["bench/plot.py", "bench/results/latest.json", "bench/results/latest.png"],
        stderr_to_stdout: true
      )

    IO.write(out)
    if status != 0, do: info("plot failed (status #{status})")

    {out, _} =
      System.cmd(
        @python,
        ["bench/compare.py", "bench/results/v1.json", "bench/results/latest.json"],
        stderr_to_stdout: true
      )

    IO.write(out)
    info("wrote bench/results/latest.json and bench/results/latest.png")
  end

  # ---- small calls ---------------------------------------------------------------------

  defp small_call do
    n = 2_000
    call = fn -> {:ok, 3} = Bridge.call({:bench_handlers, :add}, [1, 2], pool: BenchBridge) end
    Enum.each(1..200, fn _ -> call.() end)
    bridge = samples_us(n, call)

    frame = :binary.copy(<<7>>, 20)

    floor =
      with_port(@python, ["bench/raw_echo.py"], fn port ->
        ping = fn ->
          send(port, {self(), {:command, frame}})
          receive do: ({^port, {:data, ^frame}} -> :ok)
        end

        Enum.each(1..200, fn _ -> ping.() end)
        samples_us(n, ping)
      end)

    # Bridge.Metrics on (the default) and off, call by call (the switch between
    # two calls, outside the time measured): both sides see the same machine.
    # Each side's p50, and the recording itself (a collector's, off the
    # caller's path) per call
    samples =
      for i <- 1..(4 * n) do
        on? = rem(i, 2) == 0
        Bridge.Metrics.enable(on?)
        t = System.monotonic_time(:nanosecond)
        call.()
        {on?, System.monotonic_time(:nanosecond) - t}
      end

    Bridge.Metrics.enable(true)
    side = fn on? -> for {^on?, ns} <- samples, do: ns / 1000 end
    off_p50 = percentile(side.(false), 50)
    on_p50 = percentile(side.(true), 50)

    # what the collector spends recording one such call (CPU, not the caller's)
    timings = {30_000, 2_000, 0, 25_000, 500, {3_000, 3, 1, 3}}

    {record_us, _} =
      :timer.tc(fn ->
        for _ <- 1..20_000,
            do: Bridge.Metrics.record_now(BenchRecord, :m, :f, timings, :ok, [])
      end)

    %{
      "calls" => n,
      "metrics_off_p50_us" => off_p50,
      "metrics_on_p50_us" => on_p50,
      "metrics_on_over_off_p50" => ratio(on_p50, off_p50),
      "metrics_record_us" => record_us / 20_000,
      "bridge_p50_us" => percentile(bridge, 50),
      "bridge_p99_us" => percentile(bridge, 99),
      "raw_port_p50_us" => percentile(floor, 50),
      "raw_port_p99_us" => percentile(floor, 99),
      "bridge_over_raw_port_p50" => ratio(percentile(bridge, 50), percentile(floor, 50))
    }
  end

  # ---- pool throughput -------------------------------------------------------------------

  defp pool_throughput(calls) do
    spin = 400_000

    [one, two] =
      for pool_size <- [1, 2] do
        name = :"BenchPool#{pool_size}"

        {:ok, sup} =
          Bridge.start_link(
            name: name,
            python: @python,
            python_path: [@handlers],
            pool_size: pool_size,
            timeout: 120_000
          )

        # warm every worker
        1..(2 * pool_size)
        |> Task.async_stream(fn _ ->
          Bridge.call!({:bench_handlers, :spin}, [1_000], pool: name)
        end)
        |> Stream.run()

        {us, _} =
          :timer.tc(fn ->
            1..calls
            |> Task.async_stream(
              fn _ ->
                Bridge.call!({:bench_handlers, :spin}, [spin], pool: name, timeout: 120_000)
              end,
              max_concurrency: 2 * pool_size + 2,
              timeout: :infinity
            )
            |> Stream.run()
          end)

        Supervisor.stop(sup)
        calls / (us / 1_000_000)
      end

    %{
      "calls" => calls,
      "spin" => spin,
      "pool1_calls_per_s" => one,
      "pool2_calls_per_s" => two,
      "pool2_over_pool1" => ratio(two, one)
    }
  end

  defp print_sweep(rows) do
    IO.puts("Threshold sweep (echo, median): every payload inline vs every payload in a slice")

    for r <- rows do
      IO.puts(
        "  #{String.pad_trailing(human(r["size"]), 8)} inline #{String.pad_leading(fmt_us(r["inline_us"]), 8)}   slice #{String.pad_leading(fmt_us(r["slice_us"]), 8)}   #{r["slice_over_inline"]}x"
      )
    end

    IO.puts("")
  end

  defp print_untrusted(rows) do
    IO.puts("untrusted: true (every result a sealed object of its own), echo, median")

    for r <- rows do
      IO.puts(
        "  #{String.pad_trailing(human(r["size"]), 8)} default #{String.pad_leading(fmt_us(r["default_us"]), 8)}   untrusted #{String.pad_leading(fmt_us(r["untrusted_us"]), 8)}   #{r["untrusted_over_default"]}x"
      )
    end

    IO.puts("")
  end

  defp print_spin(rows) do
    IO.puts(
      "Waiting for the next call: spin_us default vs 0, echo, median (ETF over a Port beside)"
    )

    for r <- rows do
      IO.puts(
        "  #{String.pad_trailing(human(r["size"]), 8)} spin #{fmt_us(r["spin_us"])}, no spin #{fmt_us(r["no_spin_us"])} (#{r["no_spin_over_spin"]}x), ETF over Port #{fmt_us(r["etf_port_us"])}: ETF over spin #{r["etf_port_over_spin"]}x, over no spin #{r["etf_port_over_no_spin"]}x"
      )
    end

    IO.puts("")
  end

  # ---- tables: Arrow through the bridge vs an ETF list of maps over a Port -------------

  # Python -> Elixir: n rows x 4 columns (int64, float64, bool, utf8). The bridge call
  # returns a %Bridge.Table{} (columnar, fixed-width columns over the region); the
  # baseline returns the same rows as an ETF list of maps encoded by erlang-py. Both
  # Python sides build their data once per n.
  defp table_transfer(n) do
    call = fn ->
      Bridge.call({:bench_handlers, :table}, [n], pool: BenchBridge, timeout: 300_000)
    end

    {:ok, %Bridge.Table{num_rows: ^n}} = call.()

    samples =
      for _ <- 1..5 do
        {us, {:ok, _}} = :timer.tc(call)
        :erlang.garbage_collect()
        us
      end

    {to_rows_us, ^n} =
      :timer.tc(fn ->
        {:ok, table} = call.()
        length(Bridge.Table.to_rows(table))
      end)

    etf =
      with_port(@python, ["bench/etf_rows.py"], fn port ->
        get = fn ->
          send(port, {self(), {:command, :erlang.term_to_binary(n)}})
          receive do: ({^port, {:data, data}} -> length(:erlang.binary_to_term(data)))
        end

        ^n = get.()

        samples =
          for _ <- 1..3 do
            {us, ^n} = :timer.tc(get)
            :erlang.garbage_collect()
            us
          end

        percentile(samples, 50)
      end)

    bridge = percentile(samples, 50)

    %{
      "rows" => n,
      "bridge_table_us" => bridge,
      "bridge_table_then_to_rows_us" => to_rows_us,
      "etf_list_of_maps_us" => etf,
      "speedup" => ratio(etf, bridge),
      "speedup_with_to_rows" => ratio(etf, to_rows_us)
    }
  end

  defp print_tables(t) do
    IO.puts(
      "Table, #{t["rows"]} rows x 4 columns, Python -> Elixir: Bridge.call -> %Bridge.Table{} " <>
        "#{fmt_us(t["bridge_table_us"])} (then to_rows: #{fmt_us(t["bridge_table_then_to_rows_us"])} in all), " <>
        "ETF list of maps over a Port #{fmt_us(t["etf_list_of_maps_us"])}"
    )

    target("Arrow table >= 10x faster than an ETF list of maps", t["speedup"], ok?: &(&1 >= 10))

    IO.puts("  (as rows, to_rows included: #{t["speedup_with_to_rows"]}x)")
    IO.puts("")
  end

  # ---- tensor open: zero-copy means size-independent ----------------------------------

  defp tensor_open do
    {out, 0} = System.cmd(@python, ["bench/tensor_open.py", "1"])

    [small, large] =
      for line <- String.split(out, "\n", trim: true) do
        [size, secs] = String.split(line)
        {String.to_integer(size), String.to_float(secs) * 1_000_000}
      end

    %{
      "small_bytes" => elem(small, 0),
      "small_us" => elem(small, 1),
      "large_bytes" => elem(large, 0),
      "large_us" => elem(large, 1),
      "large_over_small" => ratio(elem(large, 1), elem(small, 1))
    }
  end

  defp print_tensor_open(t) do
    IO.puts(
      "Tensor open in Python (attach + read_frame + ndarray view), median: " <>
        "1 KiB #{fmt_us(t["small_us"])}, 1 GiB #{fmt_us(t["large_us"])}: #{t["large_over_small"]}x"
    )

    target("1 GiB tensor open within 3x of a 1 KiB one", t["large_over_small"], ok?: &(&1 <= 3))
    IO.puts("")
  end

  # ---- memcpy reference --------------------------------------------------------------------

  defp memcpy_times(sizes) do
    {out, 0} = System.cmd(@python, ["bench/memcpy.py" | Enum.map(sizes, &Integer.to_string/1)])

    for line <- String.split(out, "\n", trim: true), into: %{} do
      [size, secs] = String.split(line)
      {String.to_integer(size), String.to_float(secs) * 1_000_000}
    end
  end

  # ---- helpers ---------------------------------------------------------------------------

  defp with_port(python, args, fun), do: BenchEcho.Port.with_port(python, args, fun)

  defp samples_us(n, fun) do
    for _ <- 1..n do
      {us, _} = :timer.tc(fun)
      us
    end
  end

  defdelegate percentile(samples, p), to: BenchEcho
  defdelegate ratio(a, b), to: BenchEcho
  defdelegate human(size), to: BenchEcho
  defdelegate fmt_us(us), to: BenchEcho

  defp info(msg), do: IO.puts(msg)

  defp print_table(rows, small, tp) do
    IO.puts(
      "\nEcho round trip, median (bytes: the handler gets a bytes copy, the caller " <>
        "garbage-collects after each call; no GC: the same without; Buffer: a zero-copy " <>
        "memoryview)"
    )

    cols = [{"payload", 9}, {"bytes", 10}, {"no GC", 10}, {"Buffer", 10}, {"ETF/Port", 11}]
    cols = cols ++ [{"speed-up b/noGC/B", 22}, {"2x memcpy", 11}, {"vs 2x memcpy b/B", 18}]
    IO.puts(Enum.map_join(cols, fn {h, w} -> String.pad_leading(h, w) end))

    for r <- rows do
      cells = [
        human(r["size"]),
        fmt_us(r["bridge_us"]),
        fmt_us(r["bridge_plain_us"]),
        fmt_us(r["bridge_buffer_us"]),
        fmt_us(r["etf_port_us"]),
        "#{r["speedup_vs_etf_port"]}x/#{r["plain_speedup_vs_etf_port"]}x/" <>
          "#{r["buffer_speedup_vs_etf_port"]}x",
        fmt_us(r["two_memcpy_us"]),
        "#{r["bridge_over_two_memcpy"]}x / #{r["buffer_over_two_memcpy"]}x"
      ]

      IO.puts(Enum.zip_with(cells, cols, fn c, {_, w} -> String.pad_leading(c, w) end))
    end

    IO.puts("""

    Small call {:bench_handlers, :add}, [1, 2] over #{small["calls"]} calls
      Bridge.call p50 #{fmt_us(small["bridge_p50_us"])} (p99 #{fmt_us(small["bridge_p99_us"])}), raw Port round trip p50 #{fmt_us(small["raw_port_p50_us"])} (p99 #{fmt_us(small["raw_port_p99_us"])}): #{small["bridge_over_raw_port_p50"]}x the floor

    CPU-bound handler, #{tp["calls"]} calls: pool of 1 #{Float.round(tp["pool1_calls_per_s"], 1)}/s, pool of 2 #{Float.round(tp["pool2_calls_per_s"], 1)}/s: #{tp["pool2_over_pool1"]}x
    """)
  end

  # The targets of the transport-2 issue and the ones before it, each a ratio measured
  # in this run (bytes figures with the caller's GC habit; the plain figure beside).
  defp print_targets(rows, small, tp, sweep) do
    IO.puts("Targets")
    at = fn size -> Enum.find(rows, &(&1["size"] == size)) || %{} end
    r1k = at.(@kib)
    r64m = at.(64 * @mib)

    target("1 KiB echo >= 1.2x faster than ETF over a Port", r1k["speedup_vs_etf_port"],
      plain: r1k["plain_speedup_vs_etf_port"],
      ok?: &(&1 >= 1.2)
    )

    with %{} = s16 <- Enum.find(sweep, &(&1["size"] == 16 * @kib)) do
      target("16 KiB echo through slices within 1.5x of inline", s16["slice_over_inline"],
        ok?: &(&1 <= 1.5)
      )
    end

    target(
      "64 MiB Buffer echo >= 50x faster than ETF over a Port",
      r64m["buffer_speedup_vs_etf_port"],
      ok?: &(&1 >= 50)
    )

    target("64 MiB binary echo >= 20x faster than ETF over a Port", r64m["speedup_vs_etf_port"],
      plain: r64m["plain_speedup_vs_etf_port"],
      ok?: &(&1 >= 20)
    )

    target("64 MiB Buffer echo within 4x of two memcpys", r64m["buffer_over_two_memcpy"],
      ok?: &(&1 <= 4)
    )

    target("small call p50 within 1.5x of the raw Port floor", small["bridge_over_raw_port_p50"],
      ok?: &(&1 <= 1.5)
    )

    target(
      "small call p50 with Bridge.Metrics on within 1.03x of off",
      small["metrics_on_over_off_p50"],
      ok?: &(&1 <= 1.03)
    )

    target("CPU-bound handler: pool of 2 >= 1.6x pool of 1", tp["pool2_over_pool1"],
      ok?: &(&1 >= 1.6)
    )

    IO.puts("")
  end

  defp target(what, figure, opts) do
    ok? = Keyword.fetch!(opts, :ok?)
    verdict = if is_number(figure) and ok?.(figure), do: "met", else: "MISSED"

    plain =
      case Keyword.get(opts, :plain) do
        nil -> ""
        p -> " (no GC habit: #{p}x, #{if is_number(p) and ok?.(p), do: "met", else: "missed"})"
      end

    IO.puts("  #{what}: #{figure}x -> #{verdict}#{plain}")
  end
end

Code.require_file("json.exs", __DIR__)
Code.require_file("echo.exs", __DIR__)
Process.put(:bench_formats_as_lib, true)
Code.require_file("formats.exs", __DIR__)
Process.put(:bench_streams_as_lib, true)
Code.require_file("streams.exs", __DIR__)
Process.put(:bench_schemas_as_lib, true)
Code.require_file("schemas.exs", __DIR__)
Process.put(:bench_nested_as_lib, true)
Code.require_file("nested.exs", __DIR__)
Process.put(:bench_cluster_as_lib, true)
Code.require_file("cluster.exs", __DIR__)
Process.put(:bench_callbacks_as_lib, true)
Code.require_file("callbacks.exs", __DIR__)
Bench.main(System.argv())
