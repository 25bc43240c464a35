# Streams (protocol/SPEC.md §8.6) for `make bench` (bench/run.exs loads this file):
# generated data streamed Python -> Elixir (a generator of 4 MiB elements, consumed
# by Enum.reduce) and Elixir -> Python (Bridge.Stream.from of 4 MiB binaries, and of
# Bridge.Buffers, read by the handler), 1 GiB and 16 GiB each way. Each row gives its
# throughput against a NumPy memcpy of 256 MiB (memory-bound, as a stream larger than
# any cache is) measured in the same run, and the peaks, sampled every 20 ms, of the
# BEAM's and the worker's private resident memory (RssAnon) and of the shared memory
# the two map (the bridge's memfds, each counted once), so the 1 GiB and 16 GiB rows
# show whether memory grows with the total.
#
# Alone: MIX_ENV=test mix run bench/streams.exs [--quick]   (--quick: 256 MiB and 1 GiB)
defmodule BenchStreams do
  @mib 1024 * 1024
  @gib 1024 * @mib
  @chunk 4 * @mib

  def run(pool, python, quick?) do
    totals = if quick?, do: [256 * @mib, @gib], else: [@gib, 16 * @gib]
    memcpy = memcpy_gbps(python)
    [worker] = Bridge.workers(pool)
    # warm both paths
    from_python(pool, 64 * @mib)
    to_python(pool, 64 * @mib, & &1)

    rows =
      for total <- totals,
          {direction, fun} <- [
            {"python_to_elixir", fn -> from_python(pool, total) end},
            {"elixir_to_python", fn -> to_python(pool, total, & &1) end},
            {"elixir_to_python_buffer", fn -> to_python(pool, total, &Bridge.Buffer.new/1) end}
          ] do
        :erlang.garbage_collect()
        {seconds, peaks} = sampled([System.pid(), worker.os_pid], fun)
        gbps = total / seconds / 1.0e9

        %{
          "direction" => direction,
          "total_bytes" => total,
          "chunk_bytes" => @chunk,
          "seconds" => Float.round(seconds, 3),
          "gb_per_s" => Float.round(gbps, 2),
          "memcpy_gb_per_s" => Float.round(memcpy, 2),
          "of_memcpy" => Float.round(gbps / memcpy, 3),
          "beam_rss_peak_mib" => mib(peaks.beam),
          "worker_rss_peak_mib" => mib(peaks.worker),
          "shm_peak_mib" => mib(peaks.shm)
        }
      end

    %{"chunk_bytes" => @chunk, "rows" => rows}
  end

  defp from_python(pool, total) do
    n =
      Bridge.stream({:bench_handlers, :generate}, [total, @chunk], pool: pool, timeout: 120_000)
      |> Enum.reduce(0, fn bin, acc -> acc + byte_size(bin) end)

    ^n = total
  end

  defp to_python(pool, total, wrap) do
    # generated as it goes: each element a new binary, its first 8 bytes its number
    body = :binary.copy(<<7>>, @chunk - 8)

    enum =
      Stream.map(0..(div(total, @chunk) - 1), fn i -> wrap.(<<i::little-64, body::binary>>) end)

    {:ok, ^total} =
      Bridge.call({:bench_handlers, :consume}, [Bridge.Stream.from(enum)],
        pool: pool,
        timeout: 120_000
      )
  end

  # Runs `fun`, sampling resident memory and shared memory every 20 ms: the seconds
  # it took and the peaks.
  defp sampled(os_pids, fun) do
    parent = self()
    sampler = spawn_link(fn -> sample_loop(os_pids, sample(os_pids), parent) end)
    t0 = System.monotonic_time(:microsecond)
    fun.()
    seconds = (System.monotonic_time(:microsecond) - t0) / 1.0e6
    send(sampler, :stop)

    receive do
      {:peaks, peaks} -> {seconds, peaks}
    end
  end

  defp sample_loop(os_pids, peaks, parent) do
    receive do
      :stop ->
        send(parent, {:peaks, higher(peaks, sample(os_pids))})
    after
      20 -> sample_loop(os_pids, higher(peaks, sample(os_pids)), parent)
    end
  end

  defp higher(a, b), do: Map.merge(a, b, fn _, x, y -> max(x, y) end)

  defp sample([beam, worker] = os_pids) do
    %{beam: rss(beam), worker: rss(worker), shm: memfd_bytes(os_pids)}
  end

  # Private resident memory (RssAnon): the shared objects are counted apart.
  defp rss(os_pid) do
    with {:ok, status} <- File.read("/proc/#{os_pid}/status"),
         [kb] <- Regex.run(~r/^RssAnon:\s+(\d+) kB/m, status, capture: :all_but_first) do
      String.to_integer(kb) * 1024
    else
      _ -> 0
    end
  end

  # Bytes of the bridge's shared objects mapped by these processes, each object
  # (inode) once.
  defp memfd_bytes(os_pids) do
    os_pids
    |> Enum.flat_map(fn pid ->
      case File.read("/proc/#{pid}/maps") do
        {:ok, maps} -> String.split(maps, "\n")
        _ -> []
      end
    end)
    |> Enum.filter(&String.contains?(&1, "/memfd:beambridge"))
    |> Enum.reduce(%{}, fn line, acc ->
      [range, _perms, _offset, _dev, inode | _] = String.split(line)
      [from, to] = range |> String.split("-") |> Enum.map(&String.to_integer(&1, 16))
      Map.update(acc, inode, to - from, &max(&1, to - from))
    end)
    |> Map.values()
    |> Enum.sum()
  end

  defp memcpy_gbps(python) do
    {out, 0} = System.cmd(python, ["bench/memcpy.py", Integer.to_string(256 * @mib)])
    [_, seconds] = out |> String.trim() |> String.split()
    256 * @mib / String.to_float(seconds) / 1.0e9
  end

  defp mib(bytes), do: Float.round(bytes / @mib, 1)

  def print(%{"rows" => rows}) do
    IO.puts(
      "Streams of 4 MiB elements (vs a 256 MiB memcpy; peak private RSS, shared memory: MiB)"
    )

    IO.puts(
      "  " <>
        Enum.map_join(
          ["direction", "total", "GB/s", "memcpy", "of it", "BEAM rss", "worker rss", "shm"],
          " ",
          &String.pad_leading(&1, 10)
        )
    )

    for r <- rows do
      cells = [
        short(r["direction"]),
        "#{Float.round(r["total_bytes"] / @gib, 2)} GiB",
        r["gb_per_s"],
        r["memcpy_gb_per_s"],
        r["of_memcpy"],
        r["beam_rss_peak_mib"],
        r["worker_rss_peak_mib"],
        r["shm_peak_mib"]
      ]

      IO.puts("  " <> Enum.map_join(cells, " ", &String.pad_leading(to_string(&1), 10)))
    end

    IO.puts("")
  end

  defp short("python_to_elixir"), do: "py->ex"
  defp short("elixir_to_python"), do: "ex->py"
  defp short("elixir_to_python_buffer"), do: "ex->py buf"

  def print_targets(results) do
    IO.puts("Stream targets")

    for {what, figure, ok?} <- targets(results),
        do: IO.puts("  #{what}: #{figure} -> #{if ok?, do: "met", else: "MISSED"}")

    IO.puts("")
  end

  # Targets of the streaming issue, from the rows of the largest total.
  def targets(%{"rows" => rows}) do
    largest = rows |> Enum.map(& &1["total_bytes"]) |> Enum.max()
    smallest = rows |> Enum.map(& &1["total_bytes"]) |> Enum.min()

    for r <- rows, r["total_bytes"] == largest do
      small =
        Enum.find(rows, &(&1["direction"] == r["direction"] and &1["total_bytes"] == smallest))

      grew =
        r["beam_rss_peak_mib"] > small["beam_rss_peak_mib"] + 64 or
          r["worker_rss_peak_mib"] > small["worker_rss_peak_mib"] + 64

      {"#{short(r["direction"])} stream of #{div(largest, @gib)} GiB: >= 2 GB/s, <= 256 MiB " <>
         "shared memory, no RSS growth over #{div(smallest, @mib)} MiB",
       "#{r["gb_per_s"]} GB/s, #{r["shm_peak_mib"]} MiB shm, private RSS " <>
         "#{r["beam_rss_peak_mib"]}/#{r["worker_rss_peak_mib"]} MiB vs " <>
         "#{small["beam_rss_peak_mib"]}/#{small["worker_rss_peak_mib"]}",
       r["gb_per_s"] >= 2 and r["shm_peak_mib"] <= 256 and not grew}
    end
  end
end

unless Process.get(:bench_streams_as_lib) do
  quick? = "--quick" in System.argv()
  python = Path.expand(".venv/bin/python")

  {:ok, _} =
    Bridge.start_link(
      name: BenchStreamsBridge,
      python: python,
      python_path: [Path.expand("bench/handlers")],
      pool_size: 1
    )

  results = BenchStreams.run(BenchStreamsBridge, python, quick?)
  BenchStreams.print(results)
  BenchStreams.print_targets(results)
end
