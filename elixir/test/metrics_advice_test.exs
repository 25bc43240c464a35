defmodule Bridge.MetricsAdviceTest do
  # Bridge.recommendations/0 and the alerts (Bridge.alerts/0, warnings,
  # [:beambridge, :alert] events): each rule fires for a workload made to
  # trigger it, with real workers.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase
  import ExUnit.CaptureLog

  alias Bridge.Metrics.{Alerts, Monitor}
  alias Bridge.Telemetry

  @moduletag timeout: 300_000

  setup do
    on_exit(fn -> for %{id: id} <- Telemetry.list_handlers([]), do: Telemetry.detach(id) end)
    :ok
  end

  defp advice(rule, pool),
    do: Enum.filter(Bridge.recommendations(), &(&1.rule == rule and &1.pool == pool))

  defp alerts(rule, pool),
    do: Enum.filter(Bridge.alerts(), &(&1.rule == rule and &1.pool == pool))

  test "buffer: large binaries received as bytes" do
    start_supervised!({Bridge, bridge_opts(AdvBuf, pool_size: 1)})
    big = :binary.copy("b", 4 * 1024 * 1024)
    for _ <- 1..5, do: {:ok, _} = Bridge.call({:bbt_handlers, :digest}, [big], pool: AdvBuf)

    assert [a] = advice(:buffer, AdvBuf)
    assert a.function == "bbt_handlers.digest" and a.evidence.mean_bytes == 4 * 1024 * 1024
    assert a.estimated_gain.us_per_call > 0
    assert a.suggestion =~ "bbt_handlers.digest receives 4.0 MiB binaries as bytes"
    assert a.suggestion =~ "Bridge.Buffer"

    # wrapped, they are no longer plain bytes in slices: nothing more to say
    # about these calls
    before = hd(advice(:buffer, AdvBuf)).evidence.binaries
    buf = Bridge.Buffer.new(big)
    for _ <- 1..3, do: {:ok, _} = Bridge.call({:bbt_handlers, :digest}, [buf], pool: AdvBuf)
    assert hd(advice(:buffer, AdvBuf)).evidence.binaries == before
  end

  test "held_results: many result slices kept by callers" do
    start_supervised!({Bridge, bridge_opts(AdvHeld, pool_size: 1, threshold: 1024)})

    kept =
      for i <- 1..80 do
        {:ok, bin} = Bridge.call({:bbt_handlers, :make_bytes}, [4096, i], pool: AdvHeld)
        bin
      end

    assert [a] = advice(:held_results, AdvHeld)
    assert a.evidence.held_slices >= 80 and a.function == "bbt_handlers.make_bytes"
    assert a.suggestion =~ "results of bbt_handlers.make_bytes are held long: "
    assert a.estimated_gain.bytes >= 80 * 4096
    assert length(kept) == 80
  end

  test "threshold: calls of one size go both ways, and one is faster" do
    start_supervised!(
      {Bridge, bridge_opts(AdvInline, pool_size: 1, threshold: 8 * 1024 * 1024)},
      id: :inline
    )

    start_supervised!({Bridge, bridge_opts(AdvSlices, pool_size: 1)}, id: :slices)
    # the rule compares calls across the node: only these
    Bridge.Metrics.reset()
    # 3 MB: big enough that the pipe and shared memory differ by far more than the
    # rule's 10% even on a loaded machine (600 KB once did not, in a full suite run)
    value = :binary.copy("t", 3_000_000)

    for pool <- [AdvInline, AdvSlices],
        _ <- 1..25,
        do: {:ok, ^value} = Bridge.call({:bbt_handlers, :identity}, [value], pool: pool)

    found = advice(:threshold, AdvInline) ++ advice(:threshold, AdvSlices)
    assert [a | _] = found
    e = a.evidence
    assert e.calls == 25 and e.mean_value_bytes == 3_000_000

    # the advice follows what was measured
    if a.pool == AdvInline do
      assert e.slice_mean_us * 10 < e.inline_mean_us * 9 and e.suggested_threshold == 2_097_152
      assert a.suggestion =~ "values of about 2.9 MiB inline: threshold 2.0 MiB would save"
    else
      assert e.inline_mean_us * 10 < e.slice_mean_us * 9 and e.suggested_threshold > 65_536
    end

    assert a.estimated_gain.us_per_call > 0
  end

  test "an alert fires when a handler slows down 10x, naming the handler" do
    start_supervised!({Bridge, bridge_opts(AdvSlow, pool_size: 1)})
    me = self()

    :ok =
      Telemetry.attach(
        "alert",
        [:beambridge, :alert],
        fn _, m, md, _ -> send(me, {:alert, m, md}) end,
        nil
      )

    Monitor.sample_now()

    run = fn n, s ->
      for _ <- 1..n,
          do: {:ok, :ok} = Bridge.call({:bbt_handlers, :sleep}, [s, :ok], pool: AdvSlow)
    end

    # a baseline of three windows at 2 ms, none alerting
    for _ <- 1..3 do
      run.(30, 0.002)
      Monitor.sample_now()
    end

    assert alerts(:latency, AdvSlow) == []

    log =
      capture_log(fn ->
        run.(25, 0.02)
        Monitor.sample_now()
      end)

    assert [a] = alerts(:latency, AdvSlow)
    assert a.function == "bbt_handlers.sleep" and a.form == :etf
    assert a.evidence.p99_us > 3 * a.evidence.baseline_p99_us
    assert a.suggestion =~ "the handler itself got slower"
    assert log =~ "beambridge alert: bbt_handlers.sleep (etf): p99"
    assert_receive {:alert, %{value: v, baseline: b}, %{rule: :latency, pool: AdvSlow}}
    assert v > 3 * b
  end

  test "an alert fires when the error rate rises" do
    start_supervised!({Bridge, bridge_opts(AdvErr, pool_size: 1)})
    Monitor.sample_now()

    for _ <- 1..2 do
      for _ <- 1..30, do: {:ok, 1} = Bridge.call({:bbt_handlers, :sleep}, [0, 1], pool: AdvErr)
      Monitor.sample_now()
    end

    capture_log(fn ->
      for _ <- 1..25, do: {:error, _} = Bridge.call({:bbt_handlers, :sleep}, ["no"], pool: AdvErr)
      Monitor.sample_now()
    end)

    assert [a] = alerts(:errors, AdvErr)

    assert a.evidence.errors == 25 and
             a.suggestion =~ "100% of the last 25 calls failed (0% before)"
  end

  test "an alert fires for memory near its limit" do
    start_supervised!(
      {Bridge,
       bridge_opts(AdvMem,
         pool_size: 1,
         threshold: 1024,
         arena_limit: 4 * 1024 * 1024,
         min_arena: 4 * 1024 * 1024
       )}
    )

    Monitor.sample_now()

    kept =
      for i <- 1..4 do
        {:ok, bin} = Bridge.call({:bbt_handlers, :make_bytes}, [950_000, i], pool: AdvMem)
        bin
      end

    big = :binary.copy("F", 5_000_000)

    log =
      capture_log(fn ->
        assert {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: AdvMem)
        Monitor.sample_now()
      end)

    assert [m | _] = alerts(:memory, AdvMem)
    assert m.evidence.used >= 0.9 * 4 * 1024 * 1024 and m.suggestion =~ "results held of worker"
    assert log =~ "beambridge alert:"
    assert length(kept) == 4
  end

  test "alerts are rate-limited per rule, pool, function and form" do
    alert = %{rule: :latency, pool: P, function: "m.f", form: :etf, suggestion: "x"}
    other = %{alert | function: "m.g"}
    s = Alerts.new()
    {[a, b], s} = Alerts.limit(s, [alert, other], 1_000, 60_000)
    assert a.at == 1_000 and b.function == "m.g"
    {[], s} = Alerts.limit(s, [alert], 30_000, 60_000)
    {[c], _} = Alerts.limit(s, [alert], 61_000, 60_000)
    assert c.at == 61_000
  end

  test "fallbacks since the last sample raise one alert per reason; a reset starts windows afresh" do
    s = Alerts.new()
    {[], s} = Alerts.evaluate(s, %{}, %{fallbacks: %{too_large: 4, arena_full: 0}})
    {[f], s} = Alerts.evaluate(s, %{}, %{fallbacks: %{too_large: 6, arena_full: 0}})
    assert f.rule == :fallbacks and f.form == :too_large and f.evidence.values == 2
    assert f.suggestion =~ "2 value(s) went inline (too_large): values are past :arena_limit"
    {[], _} = Alerts.evaluate(s, %{}, %{fallbacks: %{too_large: 6, arena_full: 0}})

    entry = fn calls ->
      %{
        calls: calls,
        errors: 0,
        formats: %{etf: %{calls: calls, duration: Bridge.Metrics.Histogram.new()}}
      }
    end

    {[], s} = Alerts.evaluate(Alerts.new(), %{{P, "m.f"} => entry.(100)}, %{})
    {[], s} = Alerts.evaluate(s, %{{P, "m.f"} => entry.(200)}, %{})
    assert length(s.windows[{P, "m.f"}]) == 1
    # counted afresh (Bridge.Metrics.reset/0): no window of negative calls
    {[], s} = Alerts.evaluate(s, %{{P, "m.f"} => entry.(30)}, %{})
    assert s.windows[{P, "m.f"}] == nil and s.prev[{P, "m.f"}].calls == 30
    # gone from the metrics: forgotten
    {[], s} = Alerts.evaluate(s, %{}, %{})
    assert s.prev == %{}
  end

  test "the rules, as data: a window needs 20 calls, a baseline 50" do
    h = fn vs ->
      Enum.reduce(vs, Bridge.Metrics.Histogram.new(), &Bridge.Metrics.Histogram.add(&2, &1))
    end

    entry = fn calls, values ->
      %{calls: calls, errors: 0, formats: %{etf: %{calls: calls, duration: h.(values)}}}
    end

    s = Alerts.new()
    # first seen: where windows start from; ten calls are no window yet, sixty
    # are (the first: no baseline to judge by)
    {[], s} = Alerts.evaluate(s, %{{P, "m.f"} => entry.(1, [30_000])}, %{})

    {[], s} =
      Alerts.evaluate(s, %{{P, "m.f"} => entry.(11, [30_000 | List.duplicate(100, 10)])}, %{})

    {[], s} =
      Alerts.evaluate(s, %{{P, "m.f"} => entry.(61, [30_000 | List.duplicate(100, 60)])}, %{})

    slow = [30_000 | List.duplicate(100, 60)] ++ List.duplicate(5000, 25)
    {[a], _} = Alerts.evaluate(s, %{{P, "m.f"} => entry.(86, slow)}, %{})
    assert a.rule == :latency and a.value > 3 * a.baseline
  end
end
