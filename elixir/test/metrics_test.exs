defmodule Bridge.MetricsTest do
  # Bridge.Metrics: histograms that merge, and what real calls record.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  alias Bridge.Metrics
  alias Bridge.Metrics.Histogram
  alias Bridge.Test.Seed

  @moduletag timeout: 120_000

  setup_all do
    {:ok, seed: Seed.run_seed(__MODULE__)}
  end

  setup %{seed: seed, test: test} do
    Seed.seed_test(seed, test, 1)
    :ok
  end

  defp values(n), do: for(_ <- 1..n, do: trunc(:math.pow(2, :rand.uniform() * 40)) - 1)

  test "every value lies in its bucket, buckets are ordered and tight (within 25%)" do
    for v <- [0, 1, 2, 3, 4, 5, 6, 7, 8, 9 | values(5000)] do
      i = Histogram.bucket(v)
      assert v <= Histogram.upper(i)
      assert i == 0 or v > Histogram.upper(i - 1)
      assert Histogram.upper(i) <= max(v * 5 / 4, v + 1)
    end
  end

  test "histograms merge as the union of their values; quantiles are within a bucket" do
    for _ <- 1..50 do
      a = values(:rand.uniform(300))
      b = values(:rand.uniform(300))
      h = fn vs -> Enum.reduce(vs, Histogram.new(), &Histogram.add(&2, &1)) end
      assert Histogram.merge(h.(a), h.(b)) == h.(a ++ b)

      all = Enum.sort(a ++ b)

      for q <- [0.5, 0.9, 0.99, 1.0] do
        exact = Enum.at(all, max(ceil(q * length(all)) - 1, 0))
        got = Histogram.quantile(h.(a ++ b), q)
        assert got >= exact and got <= max(exact * 5 / 4, exact + 1)
      end
    end

    assert Histogram.quantile(Histogram.new(), 0.5) == nil
  end

  test "calls are counted per pool and function, with their parts and errors" do
    start_supervised!({Bridge, bridge_opts(Met, pool_size: 1, threshold: 1024)})
    Metrics.reset()

    for _ <- 1..20, do: {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Met)
    big = :binary.copy("y", 200_000)
    for _ <- 1..5, do: {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: Met)
    for _ <- 1..3, do: {:error, _} = Bridge.call({:bbt_handlers, :fail}, ["no"], pool: Met)

    snap = Metrics.snapshot()
    add = snap[{Met, "bbt_handlers.add"}]
    assert %{calls: 20, errors: 0} = add
    assert add.duration.count == 20 and add.wait.count == 20
    assert add.duration.sum >= add.wait.sum and add.wait.sum > 0
    assert Histogram.quantile(add.duration, 0.5) > 0

    # the worker's own timings split the wait: queue + transfer + its three
    for part <- [:copy, :queue, :transfer, :worker_decode, :handler, :worker_encode] do
      assert add[part].count == 20, "#{part}: #{inspect(add[part])}"
    end

    worker = add.queue.sum + add.transfer.sum + add.worker_decode.sum + add.handler.sum
    # each part is rounded down to a microsecond on its own
    assert (worker + add.worker_encode.sum) in (add.wait.sum - 5 * 20)..add.wait.sum
    assert add.copy.sum == 0 and add.size.sum == 0
    assert add.formats == %{etf: %{calls: 20, duration: add.duration}}
    assert add.sizes == %{{:etf, 0} => %{calls: 20, duration_sum: add.duration.sum}}

    identity = snap[{Met, "bbt_handlers.identity"}]
    assert identity.calls == 5 and identity.encode.count == 5 and identity.decode.sum >= 0
    assert identity.copy.count == 5 and identity.copy.sum > 0
    assert identity.bytes.to_python == %{raw_slice: %{count: 5, bytes: 1_000_000}}
    assert identity.bytes.from_python == %{raw_slice: %{count: 5, bytes: 1_000_000}}
    assert identity.size.count == 5 and identity.size.sum == 2_000_000
    # 400 KB a call: the 256 KiB class
    assert %{{:raw_slice, 262_144} => %{calls: 5}} = identity.sizes
    assert %{raw_slice: %{calls: 5}} = identity.formats

    fail = snap[{Met, "bbt_handlers.fail"}]
    assert %{calls: 3, errors: 3} = fail
    # an error answer carries no worker timings to the caller
    assert fail.handler.count == 0 and fail.duration.count == 3

    # turned off, nothing more is recorded
    Metrics.enable(false)
    {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Met)
    Metrics.enable(true)
    assert Metrics.snapshot()[{Met, "bbt_handlers.add"}].calls == 20

    text = Bridge.Metrics.Prometheus.render(snap)
    check_exposition(text)
    assert text =~ ~s(beambridge_calls_total{pool="Met",function="bbt_handlers.add"} 20\n)
    assert text =~ ~s(beambridge_call_errors_total{pool="Met",function="bbt_handlers.fail"} 3\n)

    assert text =~
             ~s(beambridge_call_microseconds_count{pool="Met",function="bbt_handlers.add",part="wait"} 20\n)

    assert text =~
             ~s(beambridge_call_microseconds_count{pool="Met",function="bbt_handlers.add",part="handler"} 20\n)

    assert text =~
             ~s(beambridge_bytes_total{pool="Met",function="bbt_handlers.identity",direction="to_python",form="raw_slice"} 1000000\n)

    assert text =~
             ~s(beambridge_call_bytes_count{pool="Met",function="bbt_handlers.identity"} 5\n)

    Metrics.reset()
    assert Metrics.snapshot() == %{}
  end

  test "the handler's time is the worker's; values that could get no slice count as fallbacks" do
    start_supervised!(
      {Bridge,
       bridge_opts(MetLimited, pool_size: 1, arena_limit: 2_097_152, min_arena: 1_048_576)}
    )

    Metrics.reset()
    {:ok, :slept} = Bridge.call({:bbt_handlers, :sleep}, [0.05, :slept], pool: MetLimited)
    sleep = Metrics.snapshot()[{MetLimited, "bbt_handlers.sleep"}]
    assert sleep.handler.sum >= 50_000 and sleep.handler.sum < sleep.duration.sum
    assert sleep.transfer.sum + sleep.queue.sum < 50_000

    big = :binary.copy("L", 3_000_000)

    ExUnit.CaptureLog.capture_log(fn ->
      assert {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: MetLimited)
    end)

    identity = Metrics.snapshot()[{MetLimited, "bbt_handlers.identity"}]
    assert identity.fallbacks == 1
    assert %{raw: %{count: 1, bytes: 3_000_000}} = identity.bytes.to_python
  end

  test "a call made inside a measured call (an argument stream that calls) leaves both whole" do
    start_supervised!({Bridge, bridge_opts(MetNested, pool_size: 2)})
    Metrics.reset()

    calling =
      Stream.map(1..5, fn i ->
        {:ok, v} = Bridge.call({:bbt_handlers, :add}, [i, 1], pool: MetNested)
        v
      end)

    assert {:ok, 20} =
             Bridge.call({:bbt_streams, :total}, [Bridge.Stream.from(calling)], pool: MetNested)

    snap = Metrics.snapshot()
    assert snap[{MetNested, "bbt_handlers.add"}].calls == 5
    assert snap[{MetNested, "bbt_streams.total"}].calls == 1
    assert Process.get(:"$bb_measure") == nil
  end

  test "calls refused before they are sent are not recorded; metrics: false holds with listeners" do
    start_supervised!({Bridge, bridge_opts(MetRefused, pool_size: 1)})
    Metrics.reset()

    assert {:error, %Bridge.Error{reason: :badarg}} =
             Bridge.call({%{a: 1}, :f}, [], pool: MetRefused)

    assert {:error, %Bridge.Error{reason: :no_pool}} = Bridge.call({:m, :f}, [], pool: NoSuchPool)
    assert Metrics.snapshot() == %{}

    :ok =
      Bridge.Telemetry.attach(
        "met-off",
        [:beambridge, :call, :stop],
        fn _, _, _, _ -> :ok end,
        nil
      )

    Metrics.enable(false)

    try do
      {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: MetRefused)
      assert Metrics.snapshot() == %{}
    after
      Metrics.enable(true)
      Bridge.Telemetry.detach("met-off")
    end
  end

  test "the exposition escapes label values and keeps every histogram whole" do
    h = Enum.reduce(values(500), Histogram.new(), &Histogram.add(&2, &1))
    snap = %{{:"Pool\"x", "m.we\"ird\\fn\nx"} => %{calls: 500, errors: 2, duration: h, wait: h}}
    text = Bridge.Metrics.Prometheus.render(snap)
    check_exposition(text)
    assert text =~ ~s(function="m.we\\"ird\\\\fn\\nx")
  end

  # The text exposition format 0.0.4: comments, then samples `name{labels} value`;
  # each histogram series' buckets cumulative, ending with le="+Inf" equal to its
  # _count, with a _sum.
  defp check_exposition(text) do
    assert String.ends_with?(text, "\n")
    label = ~S{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"}
    sample = ~r/^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(#{label}(?:,#{label})*)\} (-?\d+)$/

    samples =
      for line <- String.split(text, "\n", trim: true), not String.starts_with?(line, "#") do
        assert [_, name, labels, value] = Regex.run(sample, line), "not a sample: #{line}"
        {name, labels, String.to_integer(value)}
      end

    for line <- String.split(text, "\n", trim: true), String.starts_with?(line, "#") do
      assert line =~ ~r/^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* \S/
    end

    buckets =
      samples
      |> Enum.filter(&String.ends_with?(elem(&1, 0), "_bucket"))
      |> Enum.group_by(fn {name, labels, _} ->
        {String.trim_trailing(name, "_bucket"), String.replace(labels, ~r/,le="[^"]*"$/, "")}
      end)

    for {{metric, series}, rows} <- buckets do
      counts = Enum.map(rows, &elem(&1, 2))
      assert counts == Enum.sort(counts), "buckets of #{series} are not cumulative"
      assert List.last(rows) |> elem(1) =~ ~s(le="+Inf")

      count =
        Enum.find(
          samples,
          &(&1 |> elem(0) == "#{metric}_count" and elem(&1, 1) == series)
        )

      assert count && elem(count, 2) == List.last(counts)

      assert Enum.any?(
               samples,
               &(elem(&1, 0) == "#{metric}_sum" and elem(&1, 1) == series)
             )
    end

    assert map_size(buckets) > 0
  end
end
