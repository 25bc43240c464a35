# Typed schemas in batches (protocol/formats/ssz.md, "Batches") for `make bench`
# (bench/run.exs loads this file): 1M values of the seed's PerformanceMetrics (fixed
# size: numbers and a vector) and of its ModelConfig (strings and a list), Elixir ->
# Python and Python -> Elixir, arriving as typed values (structs; dataclass
# instances), against the same data as an ETF list of maps (arriving as maps and
# dicts, no types), in one run. Each figure is the median of 3 (the handler checks
# the type and returns the count; or returns values it built before), from the values
# in memory on one side to the values in memory on the other. The SSZ list goes in
# one Bridge.call; the ETF list of 1M maps (about 200 MB) is over the 64 MiB a control
# frame carries, so it goes as it must, in calls of 100,000 maps. No GC habit:
# nothing here collects garbage by hand; each figure is measured in a process of its
# own that makes its values (the first of the 4 runs, not counted, pays for moving
# them to the old heap).
#
# Alone: MIX_ENV=test mix run bench/schemas.exs [--quick]   (--quick: 100k values)
defmodule BenchSchemas do
  # the seed's schemas, elixir/test/support/seed_schemas.ex (Python: protocol/vectorgen/ssz.py)
  alias Seed.{ModelConfig, PerformanceMetrics}

  @python Path.expand(".venv/bin/python")
  @handlers Path.expand("bench/handlers")
  @protocol Path.expand("protocol")
  @reps 3
  # maps per call of the ETF baseline: 100,000 maps are about 20 MB of ETF
  @etf_per_call 100_000

  def main(argv) do
    {:ok, sup} =
      Bridge.start_link(
        name: BenchSchemasBridge,
        python: @python,
        python_path: [@handlers, @protocol],
        pool_size: 1,
        timeout: 300_000
      )

    result = run(BenchSchemasBridge, "--quick" in argv)
    Supervisor.stop(sup)
    print(result)
    File.mkdir_p!("bench/results")
    File.write!("bench/results/schemas.json", Bench.JSON.encode(%{"schemas" => result}) <> "\n")
  end

  @doc "Measures both schemas both ways on the bridge `pool`; one map per schema."
  def run(pool, quick?) do
    n = if quick?, do: 100_000, else: 1_000_000
    {:ok, ["config", "metrics"]} = Bridge.call({:bench_handlers, :seed_schemas}, [], pool: pool)

    for {kind, module} <- [{"metrics", PerformanceMetrics}, {"config", ModelConfig}] do
      typed = fn -> for i <- 0..(n - 1), do: struct!(module, fields(kind, i)) end

      maps = fn ->
        for i <- 0..(n - 1), do: Map.new(fields(kind, i), fn {k, v} -> {"#{k}", v} end)
      end

      # every value, in calls of `per` values
      count = fn values, format, per ->
        fn ->
          for part <- Enum.chunk_every(values, per) do
            size = length(part)

            {:ok, ^size} =
              Bridge.call({:bench_handlers, :schema_count}, [part], pool: pool, format: format)
          end
        end
      end

      rows = fn typed?, format, per ->
        fn ->
          got =
            for start <- 0..(n - 1)//per do
              {:ok, got} =
                Bridge.call({:bench_handlers, :schema_rows}, [kind, n, typed?, start, per],
                  pool: pool,
                  format: format
                )

              true = typed? == is_struct(hd(got), module)
              got
            end

          ^n = Enum.sum(Enum.map(got, &length/1))
        end
      end

      # each side alone: the codec, no bridge
      ex_encode =
        alone(fn ->
          values = typed.()
          median_s(fn -> {:ok, _} = Bridge.Schema.Batch.encode(module, values) end)
        end)

      ssz = alone(fn -> elem(Bridge.Schema.Batch.encode(module, typed.()), 1) end)

      ex_decode =
        alone(fn -> median_s(fn -> {:ok, _} = Bridge.Schema.Batch.decode(module, ssz) end) end)

      {:ok, [py_encode, py_decode]} =
        Bridge.call({:bench_handlers, :schema_codec_seconds}, [kind, n], pool: pool)

      {to_ssz, to_ssz_first} = alone(fn -> first_and_median_s(count.(typed.(), :auto, n)) end)
      to_etf = alone(fn -> median_s(count.(maps.(), :etf, @etf_per_call)) end)
      {from_ssz, _} = alone(fn -> first_and_median_s(rows.(true, :auto, n)) end)
      from_etf = alone(fn -> median_s(rows.(false, :etf, @etf_per_call)) end)

      %{
        "schema" => module.__schema__(:name),
        "n" => n,
        "bytes_per_value" => Float.round(byte_size(ssz) / n, 1),
        "to_python_ssz_s" => to_ssz,
        "to_python_etf_s" => to_etf,
        "to_python_ssz_per_s" => per_s(n, to_ssz),
        "to_python_ssz_first_per_s" => per_s(n, to_ssz_first),
        "to_python_etf_per_s" => per_s(n, to_etf),
        "from_python_ssz_s" => from_ssz,
        "from_python_etf_s" => from_etf,
        "from_python_ssz_per_s" => per_s(n, from_ssz),
        "from_python_etf_per_s" => per_s(n, from_etf),
        "elixir_encode_per_s" => per_s(n, ex_encode),
        "elixir_decode_per_s" => per_s(n, ex_decode),
        "python_encode_per_s" => per_s(n, py_encode),
        "python_decode_per_s" => per_s(n, py_decode)
      }
    end
  end

  # The same values as bench/handlers/bench_handlers.py makes.
  defp fields("metrics", i) do
    [
      step: i,
      loss: rem(i, 1000) / 8,
      accuracy: rem(i, 100) / 128,
      tokens_per_second: i * 0.5,
      latency_ms: [1.5, 2.25, rem(i, 50) / 4],
      memory_bytes: i * 4096,
      gpu_utilization: rem(i, 101),
      delta: -i
    ]
  end

  defp fields("config", i) do
    [
      name: "model-#{i}",
      hidden_size: 64 * rem(i, 64),
      num_heads: rem(i, 32),
      layers: [rem(i, 65_536), 1024, 4096, 7],
      vocab_size: 50_257,
      dropout: rem(i, 10) / 16,
      tie_embeddings: rem(i, 2) == 0,
      dtype: if(rem(i, 3) != 0, do: "bfloat16", else: "float32")
    ]
  end

  # Runs `fun` in a process of its own, which makes the values it measures: what one
  # measurement leaves on a heap (a million structs read back) is not collected in the
  # middle of the next, as it would be in one process doing all of them.
  defp alone(fun), do: fun |> Task.async() |> Task.await(:infinity)

  defp median_s(fun), do: fun |> first_and_median_s() |> elem(0)

  # The median of 3 after a first run, and that first run (Elixir -> Python: the
  # worker's first batch of a kind, whose objects' memory it has not yet kept)
  defp first_and_median_s(fun) do
    {first, _} = :timer.tc(fun)

    samples =
      for _ <- 1..@reps do
        {us, _} = :timer.tc(fun)
        us
      end

    {Float.round(Enum.at(Enum.sort(samples), div(@reps, 2)) / 1.0e6, 3),
     Float.round(first / 1.0e6, 3)}
  end

  defp per_s(n, s), do: round(n / s)

  def print(rows) do
    IO.puts("Typed schemas in batches: SSZ list (typed values) vs ETF list of maps, medians")

    for r <- rows do
      IO.puts(
        "  #{r["schema"]} x #{r["n"]} (#{r["bytes_per_value"]} B each): " <>
          "Elixir -> Python #{mps(r["to_python_ssz_per_s"])} (first call #{mps(r["to_python_ssz_first_per_s"])}; ETF maps #{mps(r["to_python_etf_per_s"])}), " <>
          "Python -> Elixir #{mps(r["from_python_ssz_per_s"])} (ETF maps #{mps(r["from_python_etf_per_s"])})"
      )

      IO.puts(
        "    each side alone: Elixir writes #{mps(r["elixir_encode_per_s"])}, reads #{mps(r["elixir_decode_per_s"])}; " <>
          "Python writes #{mps(r["python_encode_per_s"])}, reads #{mps(r["python_decode_per_s"])}"
      )
    end

    IO.puts("")
  end

  defp mps(per_s), do: "#{Float.round(per_s / 1.0e6, 2)}M/s"
end

unless Process.get(:bench_schemas_as_lib) do
  Code.require_file("json.exs", __DIR__)
  BenchSchemas.main(System.argv())
end
