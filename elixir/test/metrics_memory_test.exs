defmodule Bridge.MetricsMemoryTest do
  # Bridge.Metrics.memory/0, history/0 and streams/0, and the [:beambridge,
  # :memory, ...] and [:beambridge, :stream, ...] events, with real workers,
  # real shared memory and results held or dropped as users hold or drop them.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  alias Bridge.{Metrics, Telemetry}

  @moduletag timeout: 180_000

  setup do
    on_exit(fn -> for %{id: id} <- Telemetry.list_handlers([]), do: Telemetry.detach(id) end)
    :ok
  end

  defp listen(id, events), do: listen_telemetry(id, events)

  test "held results show as held slices and bytes of the worker, and go when dropped" do
    start_supervised!({Bridge, bridge_opts(Mem, pool_size: 1, threshold: 1024)})
    listen("memory", [[:beambridge, :memory, :sample]])
    arg = :binary.copy("a", 100_000)
    {:ok, ^arg} = Bridge.call({:bbt_handlers, :identity}, [arg], pool: Mem)

    held =
      for i <- 1..5 do
        {:ok, bin} = Bridge.call({:bbt_handlers, :make_bytes}, [200_000, i], pool: Mem)
        bin
      end

    memory = Metrics.memory()
    assert memory.headroom > 0
    pool = memory.pools[Mem]
    assert pool.held_slices >= 5 and pool.held_bytes >= 5 * 200_000
    assert pool.worker_arena_bytes >= pool.held_bytes
    # this node's arenas carried the 100 KB argument
    assert pool.arena_limit > 0 and pool.arenas >= 1 and pool.peak_used >= 100_000
    assert [{_id, %{held_slices: h}}] = Map.to_list(pool.workers)
    assert h == pool.held_slices

    sample = Bridge.Metrics.Monitor.sample_now()
    assert sample.pools[Mem].held_slices == pool.held_slices
    assert_receive {:event, [:beambridge, :memory, :sample], m, %{pool: Mem}}
    assert m.held_slices == pool.held_slices and m.headroom > 0 and m.worker_arena_bytes > 0
    assert [_ | _] = Metrics.history()
    assert List.last(Metrics.history()).pools[Mem].held_bytes == pool.held_bytes

    # dropped and collected, the slices are given back; the peak stays
    assert length(held) == 5
    held = nil
    _ = held
    :erlang.garbage_collect()
    Process.sleep(50)
    after_drop = Metrics.memory().pools[Mem]
    assert after_drop.held_slices == 0 and after_drop.held_bytes == 0
    assert after_drop.peak_held_slices >= 5 and after_drop.peak_held_bytes >= 1_000_000
  end

  test "a caller that drops large results without collecting is collected, and counted" do
    start_supervised!(
      {Bridge, bridge_opts(MemGC, pool_size: 1, threshold: 1024, arena_limit: 8 * 1024 * 1024)}
    )

    before = Metrics.memory().evictions.caller_gcs

    for i <- 1..40 do
      {:ok, _} = Bridge.call({:bbt_handlers, :make_bytes}, [500_000, i], pool: MemGC)
    end

    assert Metrics.memory().evictions.caller_gcs > before
  end

  test "a value that gets no slice is a fallback, counted and sent as an event" do
    start_supervised!(
      {Bridge, bridge_opts(MemFb, pool_size: 1, arena_limit: 2_097_152, min_arena: 1_048_576)}
    )

    listen("fallback", [[:beambridge, :memory, :fallback]])
    before = Metrics.memory().fallbacks.too_large
    big = :binary.copy("F", 3_000_000)

    ExUnit.CaptureLog.capture_log(fn ->
      assert {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: MemFb)
    end)

    assert_receive {:event, [:beambridge, :memory, :fallback], %{count: 1, bytes: 3_000_000},
                    %{direction: :to_python, form: :raw, reason: :too_large}}

    assert Metrics.memory().fallbacks.too_large >= before + 1
  end

  test "a stream emits start, an element per element and stop, and is counted" do
    start_supervised!({Bridge, bridge_opts(MemStream, pool_size: 1, threshold: 1024)})
    Metrics.reset()

    listen("streams", [
      [:beambridge, :stream, :start],
      [:beambridge, :stream, :element],
      [:beambridge, :stream, :stop]
    ])

    blobs = Bridge.stream({:bbt_streams, :blobs}, [10, 5000], pool: MemStream, window: 4)
    assert length(Enum.to_list(blobs)) == 10

    assert_receive {:event, [:beambridge, :stream, :start], %{monotonic_time: _},
                    %{pool: MemStream, function: :blobs, telemetry_span_context: ref}}

    for _ <- 1..10 do
      assert_receive {:event, [:beambridge, :stream, :element], m,
                      %{telemetry_span_context: ^ref}}

      assert m.bytes >= 5000 and m.in_flight in 0..4 and m.window == 4
    end

    assert_receive {:event, [:beambridge, :stream, :stop], stop, %{result: :ok, error: nil}}
    assert stop.elements == 10 and stop.bytes >= 50_000 and stop.duration > 0

    # closed early, and failed
    assert [0, 1] = Bridge.stream({:bbt_streams, :count}, [100], pool: MemStream) |> Enum.take(2)
    assert_receive {:event, [:beambridge, :stream, :stop], %{elements: 2}, %{result: :cancelled}}

    assert_raise Bridge.Error, fn ->
      Bridge.stream({:bbt_streams, :fails_after}, [3], pool: MemStream) |> Enum.to_list()
    end

    assert_receive {:event, [:beambridge, :stream, :stop], %{elements: 3},
                    %{result: :error, error: %Bridge.Error{kind: :python_exception}}}

    streams = Metrics.streams()
    blobs = streams[{MemStream, "bbt_streams.blobs"}]
    assert %{streams: 1, errors: 0, cancelled: 0, elements: 10} = blobs
    assert blobs.bytes >= 50_000 and blobs.elements_per_second > 0
    assert blobs.mean_in_flight >= 0 and blobs.mean_in_flight <= 4
    assert %{streams: 1, cancelled: 1, elements: 2} = streams[{MemStream, "bbt_streams.count"}]
    assert %{streams: 1, errors: 1} = streams[{MemStream, "bbt_streams.fails_after"}]
  end
end
