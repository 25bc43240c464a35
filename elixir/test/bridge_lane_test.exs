defmodule Bridge.LaneTest do
  # The lane (protocol/SPEC.md §8.5): calls and answers that pass through shared
  # memory while the BEAM and the worker poll, the pipe when either sleeps, and a
  # handler that forges what the BEAM reads there.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase
  import ExUnit.CaptureLog

  @moduletag timeout: 120_000

  defp call(pool, fun, args, opts \\ []),
    do: Bridge.call({:bbt_handlers, fun}, args, [pool: pool] ++ opts)

  defp lane_calls(pool), do: pool |> Bridge.workers() |> Enum.map(& &1.lane_calls) |> Enum.sum()

  test "the NIF's lane layout is the registry's" do
    layout = Map.new(Bridge.NIF.lane_layout(), fn {k, v} -> {List.to_string(k), v} end)
    assert layout == Bridge.Registry.lane()
  end

  test "the BEAM polls longer for answers that came just after its poll, never past 1 ms" do
    assert Bridge.Lane.stretch(50, 10) == 50
    assert Bridge.Lane.stretch(50, 80) == 120
    assert Bridge.Lane.stretch(50, 190) == 200
    assert Bridge.Lane.stretch(50, 201) == 50
    assert Bridge.Lane.stretch(400, 900) == 1_000
    assert Bridge.Lane.stretch(0, 5) == 0
  end

  test "with the workers polling, small calls go through the lane and come back right" do
    start_supervised!({Bridge, bridge_opts(Lane1, pool_size: 1, spin_us: 2_000)})
    assert [%{lane: true}] = Bridge.workers(Lane1)

    for i <- 1..300 do
      payload = :binary.copy(<<rem(i, 256)>>, rem(i * 37, 4000))
      assert {:ok, ^payload} = call(Lane1, :identity, [payload])
    end

    # The first call after a worker falls asleep goes on the pipe; the rest find it awake.
    assert lane_calls(Lane1) >= 250
  end

  test "what a handler prints is logged before its call returns, lane or not" do
    start_supervised!({Bridge, bridge_opts(LaneLog, pool_size: 1, spin_us: 100_000)})

    for i <- 1..60 do
      log = capture_log(fn -> assert {:ok, "done"} = call(LaneLog, :chatty, ["n#{i}"]) end)
      assert log =~ "stdout says n#{i}"
      assert log =~ "stderr says n#{i}"
    end

    assert lane_calls(LaneLog) > 0
  end

  test "spin_us: 0 gives no lane, and calls use the pipe" do
    start_supervised!({Bridge, bridge_opts(Lane0, pool_size: 1, spin_us: 0)})
    assert [%{lane: false}] = Bridge.workers(Lane0)
    for i <- 1..20, do: assert({:ok, ^i} = call(Lane0, :add, [i, 0]))
    assert lane_calls(Lane0) == 0
  end

  test "answers that take longer than the spin, or are too big for the lane, still arrive" do
    start_supervised!({Bridge, bridge_opts(LaneSlow, pool_size: 1, spin_us: 50)})

    for i <- 1..40 do
      # alternating: within the spin, past it (the BEAM parks and is rung), past the
      # 1 ms second look, and answers bigger than the lane's area (they go on the pipe)
      case rem(i, 4) do
        0 -> assert {:ok, ^i} = call(LaneSlow, :add, [i, 0])
        1 -> assert {:ok, :slept} = call(LaneSlow, :sleep, [0.0003, :slept])
        2 -> assert {:ok, :slept} = call(LaneSlow, :sleep, [0.02, :slept])
        3 -> assert {:ok, <<_::binary-size(60_000)>>} = call(LaneSlow, :make_bytes, [60_000, i])
      end
    end

    assert lane_calls(LaneSlow) > 0
  end

  test "concurrent callers over two workers each get their own answer" do
    start_supervised!({Bridge, bridge_opts(LaneMany, pool_size: 2, spin_us: 200)})

    results =
      1..2_000
      |> Task.async_stream(
        fn i ->
          {i, call(LaneMany, :identity, [{i, :binary.copy(<<rem(i, 251)>>, rem(i, 900))}])}
        end,
        max_concurrency: 64,
        timeout: 60_000
      )
      |> Enum.map(fn {:ok, r} -> r end)

    for {i, result} <- results,
        do: assert(result == {:ok, {i, :binary.copy(<<rem(i, 251)>>, rem(i, 900))}})

    assert lane_calls(LaneMany) > 0
  end

  test "a worker that dies, times out or loses its caller in a lane call is replaced, calls go on" do
    start_supervised!({Bridge, bridge_opts(LaneDeath, pool_size: 1, spin_us: 100_000)})
    warm = fn -> assert {:ok, 2} = call(LaneDeath, :add, [1, 1]) end

    warm.()

    capture_log(fn ->
      assert {:error, %Bridge.Error{kind: :worker_died}} = call(LaneDeath, :exit_now, [3])
    end)

    warm.()
    warm.()

    capture_log(fn ->
      assert {:error, %Bridge.Error{kind: :timeout}} =
               call(LaneDeath, :sleep, [5, :late], timeout: 200)
    end)

    warm.()
    warm.()
    task = Task.async(fn -> call(LaneDeath, :sleep, [0.3, :late]) end)
    Process.sleep(50)
    Task.shutdown(task, :brutal_kill)
    # the worker finishes the orphaned call; its answer reaches nobody
    for i <- 1..20, do: assert({:ok, ^i} = call(LaneDeath, :add, [i, 0]))
    assert [%{lane: true, lane_calls: n}] = Bridge.workers(LaneDeath)
    assert n > 10
  end

  for kind <- ["length", "garbage"] do
    test "a handler that forges an answer in its lane (#{kind}) fails only its call" do
      # the worker polls long after each answer, so the next call takes the lane
      start_supervised!({Bridge, bridge_opts(LaneForge, pool_size: 1, spin_us: 100_000)})
      [%{os_pid: before, lane: true}] = Bridge.workers(LaneForge)
      assert {:ok, 2} = call(LaneForge, :add, [1, 1])

      log =
        capture_log(fn ->
          assert {:error, %Bridge.Error{kind: :bad_frame, field: field}} =
                   Bridge.call({:bbt_hostile, :forge_lane_answer}, [unquote(kind)],
                     pool: LaneForge
                   )

          assert field in [:lane, :control_frame]
        end)

      assert log =~ "killing it"
      # a new interpreter, with a lane of its own, takes the next calls
      assert {:ok, 3} = call(LaneForge, :add, [1, 2])
      assert [%{os_pid: later, lane: true, lane_calls: n}] = Bridge.workers(LaneForge)
      assert later != before and n >= 1
    end
  end
end
