# A 64 MiB call to another node's pool (issue 15's bench rows, protocol/SPEC.md §15):
# this node runs no pool; a peer node on localhost (OTP's :peer, started here) runs
# one worker. The argument crosses the distribution connection (compressed as
# :compress says), enters the peer's shared memory, and the handler returns its
# length: the call is the transfer. A step of `make bench`; alone:
#   MIX_ENV=test mix run bench/cluster.exs [--quick]
#
# Rows: compressible data (log-like text lines; a float32 tensor of a few distinct
# values, as model inputs often are) and incompressible data (random bytes), each
# sent with :none, :lz4, :zstd, :gzip and :auto, the settings interleaved round by
# round (each timed call after an untimed one of the same setting), the median of
# the rounds reported; :auto's ratios are paired (the median over rounds of its time
# over the other's in the same round). For each row: :auto against the best
# fixed setting (target: within 10%) and against :none (target on incompressible
# data: at most 5% slower). Before measuring, a few calls let :auto learn the
# connection's speed, as it does in a running system.
#
# Localhost is the fastest wire there is (a memcpy through the kernel); over a real
# network the wire is slower and compression pays more often. The crossovers of the
# :auto model (Bridge.Codec.Choice) are printed for a few wire speeds.
defmodule BenchCluster do
  alias Bridge.Test.Peers

  @mib 1_048_576
  @settings [:none, :lz4, :zstd, :gzip, :auto]
  # the order of a round: :auto next to :none and :zstd, the likely best ones, so
  # its paired ratios compare calls made moments apart
  @round [:none, :auto, :zstd, :lz4, :gzip]

  def main(argv) do
    print(run(Path.expand(".venv/bin/python"), "--quick" in argv))
  end

  def run(python, quick?) do
    size = if quick?, do: 16 * @mib, else: 64 * @mib
    rounds = if quick?, do: 3, else: 21
    undo = Peers.distribute!()
    {peer, node} = Peers.start!(:bb_bench)

    try do
      opts = [
        name: BenchCluster,
        python: python,
        python_path: [Path.expand("bench/handlers")],
        pool_size: 1,
        timeout: 120_000
      ]

      {:ok, _} = :erpc.call(node, Peers, :start_pool, [opts])
      true = Peers.until(fn -> node in Bridge.Cluster.nodes(BenchCluster) end)

      datasets = datasets(size)

      rows =
        for {name, data} <- datasets do
          warm(data, node)
          times = measure(data, node, rounds)
          Map.put(row(name, data, times), "codecs", codec_speeds(data))
        end

      %{
        "size" => size,
        "rounds" => rounds,
        "rows" => rows,
        "crossovers" => crossovers(datasets),
        "learned_mb_per_s" => Bridge.Remote.speed(node) / 1.0e6
      }
    after
      Peers.stop(peer)
      undo.()
    end
  end

  defp datasets(size) do
    line = "2026-12-03T08:00:00Z INFO request id=%06d path=/api/v1/items status=200 ms=%03d\n"

    text =
      Stream.iterate(0, &(&1 + 1))
      |> Stream.map(fn i ->
        line
        |> String.replace("%06d", String.pad_leading("#{rem(i * 7919, 1_000_000)}", 6, "0"))
        |> String.replace("%03d", String.pad_leading("#{rem(i, 997)}", 3, "0"))
      end)
      |> Enum.reduce_while({[], 0}, fn l, {acc, n} ->
        if n >= size, do: {:halt, {acc, n}}, else: {:cont, {[l | acc], n + byte_size(l)}}
      end)
      |> elem(0)
      |> Enum.reverse()
      |> IO.iodata_to_binary()
      |> binary_part(0, size)

    values = for i <- 0..255, into: <<>>, do: <<rem(i * 37, 251) / 8::float-32-little>>
    floats = :binary.copy(values, div(size, byte_size(values)))

    [
      {"text lines (compressible)", text},
      {"float32 tensor (compressible)", Bridge.Tensor.new!(floats, {:f, 32}, {div(size, 4)})},
      {"random bytes (incompressible)", :crypto.strong_rand_bytes(size)}
    ]
  end

  defp call(data, node, setting) do
    {:ok, _} =
      Bridge.call({:bench_handlers, :size_of}, [data],
        pool: BenchCluster,
        node: node,
        compress: setting,
        timeout: 120_000
      )
  end

  defp warm(data, node), do: for(s <- @settings, _ <- 1..2, do: call(data, node, s))

  defp measure(data, node, rounds) do
    samples =
      for r <- 1..rounds, s <- @round do
        # one call of the same setting first: a plain 64 MiB call right after a
        # compressed one is slower (both nodes' allocators hand out fresh memory
        # again), a cost no steady use of one setting pays
        call(data, node, s)
        :erlang.garbage_collect()
        t = System.monotonic_time(:microsecond)
        call(data, node, s)
        {r, s, System.monotonic_time(:microsecond) - t}
      end

    Map.new(@settings, fn s -> {s, for({_, ^s, us} <- samples, do: us)} end)
  end

  # The median over rounds of :auto's time over `other`'s in the same round:
  # calls next to each other see the same machine (a paired ratio; the medians
  # of the settings alone drift with the load of two VMs and a Python on two
  # cores).
  defp paired(times, other) do
    times.auto
    |> Enum.zip(Map.fetch!(times, other))
    |> Enum.map(fn {a, b} -> a / b end)
    |> median()
  end

  # The NIF's codecs on this data, alone (the table of Bridge.Codec.Choice comes
  # from these): ratio of the 64 KiB sample and of the whole, MB/s each way.
  defp codec_speeds(data) do
    bin = if is_binary(data), do: data, else: data.data
    sample = binary_part(bin, 0, 65_536)

    for codec <- [:lz4_frame, :zstd, :gzip], into: %{} do
      {:ok, small} = Bridge.Codec.compress(codec, sample)
      {c_us, {:ok, z}} = :timer.tc(fn -> Bridge.Codec.compress(codec, bin) end)
      {d_us, {:ok, _}} = :timer.tc(fn -> Bridge.Codec.decompress(codec, z, byte_size(bin)) end)

      {Atom.to_string(codec),
       %{
         "sample_ratio" => byte_size(small) / 65_536,
         "ratio" => byte_size(z) / byte_size(bin),
         "compress_mb_per_s" => byte_size(bin) / c_us,
         "decompress_mb_per_s" => byte_size(bin) / d_us
       }}
    end
  end

  defp row(name, data, samples) do
    bytes = if is_binary(data), do: byte_size(data), else: byte_size(data.data)
    times = Map.new(samples, fn {s, us} -> {s, median(us)} end)
    {best, _} = times |> Map.drop([:auto]) |> Enum.min_by(&elem(&1, 1))
    sample = binary_part(if(is_binary(data), do: data, else: data.data), 0, 65_536)

    %{
      "data" => name,
      "ms" => Map.new(times, fn {s, us} -> {Atom.to_string(s), us / 1000} end),
      "mb_per_s" => Map.new(times, fn {s, us} -> {Atom.to_string(s), bytes / us} end),
      "best" => Atom.to_string(best),
      "auto_chose" => Atom.to_string(Bridge.Codec.Choice.choose(sample, speed())),
      "auto_vs_best" => paired(samples, best),
      "auto_vs_none" => paired(samples, :none),
      "auto_vs_none_medians" => times.auto / times.none
    }
  end

  defp speed do
    case Bridge.Cluster.nodes(BenchCluster) do
      [node | _] -> Bridge.Remote.speed(node)
      [] -> 1.0e9
    end
  end

  # For each dataset: the wire speed below which :auto compresses it, and with what.
  defp crossovers(datasets) do
    for {name, data} <- datasets do
      bin = if is_binary(data), do: data, else: data.data
      {codec, speed} = Bridge.Codec.Choice.crossover(bin)
      %{"data" => name, "codec" => Atom.to_string(codec), "below_mb_per_s" => speed / 1.0e6}
    end
  end

  defp median(xs), do: xs |> Enum.sort() |> Enum.at(div(length(xs), 2))

  def print(%{"rows" => rows} = r) do
    IO.puts(
      "\n64 MiB call to another node (#{div(r["size"], @mib)} MiB, median of #{r["rounds"]})"
    )

    IO.puts(
      "  data                            none     lz4     zstd    gzip    auto   auto/best auto/none"
    )

    for row <- rows do
      ms = row["ms"]

      cols =
        Enum.map_join(@settings, " ", fn s ->
          :io_lib.format("~7.1f", [ms[Atom.to_string(s)]]) |> IO.iodata_to_binary()
        end)

      IO.puts(
        "  #{String.pad_trailing(row["data"], 30)} #{cols} ms  " <>
          IO.iodata_to_binary(
            :io_lib.format("~5.2fx    ~5.2fx  (medians: ~4.2fx; best ~s, auto chose ~s)", [
              row["auto_vs_best"],
              row["auto_vs_none"],
              row["auto_vs_none_medians"],
              row["best"],
              row["auto_chose"]
            ])
          )
      )
    end

    for row <- rows, {codec, c} <- Enum.sort(row["codecs"]) do
      IO.puts(
        "  #{String.pad_trailing(row["data"], 30)} #{String.pad_trailing(codec, 9)} " <>
          "sample ratio #{Float.round(c["sample_ratio"], 4)}, ratio #{Float.round(c["ratio"], 4)}, " <>
          "#{round(c["compress_mb_per_s"])} MB/s in, #{round(c["decompress_mb_per_s"])} MB/s out"
      )
    end

    IO.puts("  the connection's speed as :auto learned it: #{round(r["learned_mb_per_s"])} MB/s")

    for c <- r["crossovers"] do
      IO.puts(
        "  :auto compresses #{c["data"]} below #{round(c["below_mb_per_s"])} MB/s " <>
          "of wire (with #{c["codec"]})"
      )
    end
  end
end

unless Process.get(:bench_cluster_as_lib), do: BenchCluster.main(System.argv())
