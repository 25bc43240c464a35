defmodule Bridge.CancelTest do
  # A call past its timeout interrupts its handler and keeps the worker
  # (protocol/SPEC.md §8.7): real workers, real signals, module state read back.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Bridge.Test.BridgeCase

  @moduletag timeout: 120_000

  setup do
    start_supervised!({Bridge, bridge_opts(Cancel, pool_size: 1, cancel_grace: 1_000)})
    all_ready(Cancel, 1)
    :ok
  end

  defp call(fun, args, opts \\ []),
    do: Bridge.call({:bbt_cancel, fun}, args, [pool: Cancel] ++ opts)

  defp state do
    {:ok, [os_pid, count, cleaned]} = call(:state, [])
    {os_pid, count, cleaned}
  end

  defp timed(fun) do
    {us, result} = :timer.tc(fun)
    {div(us, 1000), result}
  end

  test "a handler asleep in Python past its timeout: :timeout, same interpreter, state kept" do
    for n <- 1..3, do: assert({:ok, ^n} = call(:bump, []))
    {os_pid, 3, []} = state()

    log =
      capture_log(fn ->
        {ms, result} = timed(fn -> call(:nap, [30, "first"], timeout: 300) end)
        assert {:error, %Bridge.Error{kind: :timeout} = e} = result
        assert e.message =~ "interrupted"
        # answered at the deadline, not after the handler (30 s) or the grace
        assert ms < 1_000

        # the next call waits for the handler to unwind, then runs on the same
        # interpreter: the counter goes on from 3, the handler's finally ran
        assert {:ok, 4} = call(:bump, [])
      end)

    assert log =~ "interrupting its handler"
    refute log =~ "restarting"
    assert {^os_pid, 4, ["first"]} = state()
    refute_received _
  end

  test "a handler busy in bytecode is interrupted too" do
    {os_pid, _, _} = state()

    capture_log(fn ->
      assert {:error, %{kind: :timeout}} = call(:spin, [30, "spun"], timeout: 300)
    end)

    assert {^os_pid, _, ["spun"]} = state()
  end

  test "C code that holds the GIL: :timeout at the deadline, the kill path, the next call works" do
    {:ok, 1} = call(:bump, [])
    {os_pid, 1, _} = state()

    log =
      capture_log(fn ->
        {ms, result} = timed(fn -> call(:in_c, [1_000_000_000_000], timeout: 300) end)
        assert {:error, %Bridge.Error{kind: :timeout}} = result
        assert ms < 1_000

        # a new interpreter (the module loaded afresh: its counter starts again)
        {new_pid, count, []} = state()
        assert new_pid != os_pid
        assert count == 0
      end)

    assert log =~ "did not stop within cancel_grace (1000 ms)"
    refute alive?(os_pid)
    assert {:ok, 1} = call(:bump, [])
  end

  test "a handler that swallows the interrupt is killed after cancel_grace" do
    {os_pid, _, _} = state()

    capture_log(fn ->
      assert {:error, %{kind: :timeout}} = call(:stubborn, [30], timeout: 200)
      {new_pid, _, _} = state()
      assert new_pid != os_pid
    end)
  end

  test "an async handler runs on the worker's event loop and is cancelled through asyncio" do
    {:ok, ["v", loop]} = call(:aecho, ["v"])
    # the same loop from call to call: what a handler made on it stays usable
    assert {:ok, ["w", ^loop]} = call(:aecho, ["w"])
    {os_pid, _, _} = state()

    capture_log(fn ->
      assert {:error, %{kind: :timeout}} = call(:anap, [30, "a"], timeout: 300)
    end)

    assert {^os_pid, _, [{"cancelled", "a"}]} = state()
    assert {:ok, ["x", ^loop]} = call(:aecho, ["x"])
    assert {:ok, "done"} = call(:anap, [0.01, "done"])
  end

  test "cancel_grace: 0 kills at once" do
    start_supervised!({Bridge, bridge_opts(Grace0, pool_size: 1, cancel_grace: 0)}, id: :grace0)
    pid = fn -> Bridge.call({:bbt_handlers, :pid}, [], pool: Grace0) end
    {:ok, os_pid} = pid.()

    log =
      capture_log(fn ->
        assert {:error, %{kind: :timeout} = e} =
                 Bridge.call({:bbt_cancel, :nap}, [30, "x"], pool: Grace0, timeout: 200)

        assert e.message =~ "restarted"
        {:ok, new_pid} = pid.()
        assert new_pid != os_pid
      end)

    assert log =~ "restarting the interpreter"
  end

  test "calls that end just before or just after their deadline: every answer its own, nothing held" do
    {os_pid, _, _} = state()
    base = hd(Bridge.workers(Cancel))

    {results, _log} =
      with_log(fn ->
        for i <- 1..40 do
          # 2 MB results (worker slices) ready around the 100 ms deadline
          seconds = 0.08 + rem(i, 5) * 0.01

          case call(:big_after, [seconds, 2_000_000], timeout: 100) do
            {:ok, bin} -> {:ok, byte_size(bin)}
            {:error, %{kind: kind}} -> kind
          end
        end
      end)

    assert Enum.all?(results, &(&1 in [{:ok, 2_000_000}, :timeout]))
    assert :timeout in results

    # still the same interpreter, and the results nobody took were let go
    assert {^os_pid, _, _} = state()
    :erlang.garbage_collect()

    eventually(fn ->
      info = hd(Bridge.workers(Cancel))
      info.held_slices == base.held_slices and info.phase == :ready
    end)

    Process.sleep(300)
    refute_received _
  end

  test "a result stream past its element timeout: the generator is closed, the worker kept" do
    {os_pid, _, _} = state()

    capture_log(fn ->
      error =
        assert_raise Bridge.Error, fn ->
          Bridge.stream({:bbt_cancel, :slow_elements}, [3, 5.0], pool: Cancel, timeout: 300)
          |> Enum.to_list()
        end

      assert error.kind == :timeout
    end)

    assert {^os_pid, _, [{"stream", 3}]} = state()
    refute_received _
  end

  test "a handler waiting on an argument stream past its timeout: unwound, the worker kept" do
    {os_pid, _, _} = state()
    slow = Stream.repeatedly(fn -> Process.sleep(2_000) && "abc" end)

    capture_log(fn ->
      assert {:error, %{kind: :timeout}} = call(:drain, [Bridge.Stream.from(slow)], timeout: 300)
    end)

    assert {^os_pid, _, [{"drain", _}]} = state()
  end

  test "a loop of calls racing their deadlines never loses the interpreter" do
    {os_pid, _, _} = state()

    {outcomes, _log} =
      with_log(fn ->
        for i <- 1..100, do: {i, call(:nap, [rem(i, 7) * 0.01, i], timeout: 40)}
      end)

    # each answer is its own call's: none came late to the next caller
    for {i, outcome} <- outcomes do
      assert match?({:ok, ^i}, outcome) or match?({:error, %{kind: :timeout}}, outcome)
    end

    assert Enum.any?(outcomes, &match?({_, {:ok, _}}, &1))
    assert Enum.any?(outcomes, &match?({_, {:error, _}}, &1))
    assert {^os_pid, _, _} = state()
  end
end
