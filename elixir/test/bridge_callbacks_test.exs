defmodule Bridge.CallbacksTest do
  # Handlers calling back into Elixir (protocol/SPEC.md §8.8): real workers,
  # the callbacks run in the caller's process, data through shared memory both ways.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Bridge.Test.BridgeCase

  @moduletag timeout: 180_000

  defmodule Fns do
    @moduledoc false
    def double(x), do: 2 * x
    def get_user(id), do: %{"id" => id, "name" => "user #{id}"}
    def whoami, do: self()
    def boom(_), do: raise(ArgumentError, "no such user")
    def bye, do: exit(:gone)
    def sleep(ms), do: Process.sleep(ms) && ms
    def secret, do: :never

    def big(data) do
      Process.put(:big_hash, :crypto.hash(:sha256, data))
      :binary.copy(<<7>>, byte_size(data))
    end

    def die_now, do: Process.exit(self(), :kill)

    def in_session do
      Bridge.call!({:bbt_callbacks, :add}, [1, 2], session: Process.get(:test_session))
    end

    def nested(depth) do
      pool = Process.get(:test_pool)
      Bridge.call!({:bbt_callbacks, :nested}, [depth], pool: pool, timeout: 30_000)
    end
  end

  @allowed [
    {Fns, :double, 1},
    {Fns, :get_user, 1},
    {Fns, :whoami, 0},
    {Fns, :boom, 1},
    {Fns, :bye, 0},
    {Fns, :sleep, 1},
    {Fns, :big, 1},
    {Fns, :nested, 1},
    {Fns, :in_session, 0},
    {Fns, :die_now, 0},
    {:lists, :reverse, 1},
    {:send, :bbt_listener}
  ]

  setup do
    start_supervised!(
      {Bridge, bridge_opts(Cb, pool_size: 2, callbacks: @allowed, arena_limit: 512 * 1024 * 1024)}
    )

    all_ready(Cb)
    Process.put(:test_pool, Cb)
    :ok
  end

  defp call(fun, args, opts \\ []),
    do: Bridge.call({:bbt_callbacks, fun}, args, opts ++ [pool: Cb, timeout: 60_000])

  test "an allowed function: its result, in the caller's own process" do
    assert {:ok, 42} = call(:call, ["double", [21]])
    assert {:ok, %{"id" => 7, "name" => "user 7"}} = call(:call, ["get_user", [7]])
    me = self()
    assert {:ok, ^me} = call(:call, ["whoami", []])
    # an Erlang module, named as Python would write it
    assert {:ok, [3, 2, 1]} = call(:call_module, ["lists", "reverse", [[1, 2, 3]]])
    assert {:ok, [3, 2, 1]} = call(:call_module, [":lists", "reverse", [[1, 2, 3]]])
    assert {:ok, 84} = call(:call_module, ["Elixir.Bridge.CallbacksTest.Fns", "double", [42]])
  end

  test "64 MiB both ways through shared memory, bit-exact" do
    size = 64 * 1024 * 1024
    Bridge.reset_format_stats()
    data = :binary.copy(:binary.list_to_bin(Enum.to_list(0..255)), div(size, 256))
    sent_hash = Base.encode16(:crypto.hash(:sha256, data), case: :lower)
    back_hash = Base.encode16(:crypto.hash(:sha256, :binary.copy(<<7>>, size)), case: :lower)

    assert {:ok, [^sent_hash, ^size, ^back_hash]} = call(:big_both_ways, [size])
    # the callback ran here: what Elixir received is what Python sent
    assert Base.encode16(Process.get(:big_hash), case: :lower) == sent_hash

    stats = Bridge.format_stats()
    assert slice_bytes(stats, :from_python) >= size
    assert slice_bytes(stats, :to_python) >= size
  end

  # bytes of binaries that went through shared memory, in one direction
  defp slice_bytes(stats, direction) do
    for %{direction: ^direction, form: :raw_slice, bytes: bytes} <- stats,
        reduce: 0,
        do: (acc -> acc + bytes)
  end

  test "anything not on the list is refused, with what to add" do
    assert {:ok, ["refused", "not_allowed", message]} =
             call(:outcome, ["Bridge.CallbacksTest.Fns", "secret", []])

    assert message =~ "Bridge.CallbacksTest.Fns.secret/0 is not in the pool's callbacks"
    assert message =~ "{Bridge.CallbacksTest.Fns, :secret, 0}"

    # the right name with the wrong arity, a module nobody allowed, a made-up name
    assert {:ok, ["refused" | _]} = call(:outcome, ["Bridge.CallbacksTest.Fns", "double", [1, 2]])
    assert {:ok, ["refused" | _]} = call(:outcome, ["System", "halt", [0]])

    assert {:ok, ["refused" | _]} =
             call(:outcome, ["Elixir.NoSuchModule#{System.unique_integer()}", "f", []])

    # and the worker carries on
    assert {:ok, 4} = call(:call, ["double", [2]])
  end

  test "a function that raises, throws or exits: ElixirError with its type and message" do
    assert {:ok, ["error", "callback_raised", "ArgumentError", message]} =
             call(:outcome, ["Bridge.CallbacksTest.Fns", "boom", [1]])

    assert message =~ "no such user"

    assert {:ok, ["error", "callback_raised", "exit", "callback_raised: :gone"]} =
             call(:outcome, ["Bridge.CallbacksTest.Fns", "bye", []])

    # uncaught in the handler: the call's error names it
    assert {:error, %Bridge.Error{kind: :python_exception, python_type: type}} =
             call(:call, ["boom", [1]])

    assert type == "beambridge.elixir.ElixirError"
  end

  test "send: to a pid Python was given, to an allowed name; forged pids and other names refused" do
    assert {:ok, "sent"} = call(:send_to, [self(), {"hello", 42}])
    assert_receive {"hello", 42}

    Process.register(self(), :bbt_listener)
    assert {:ok, "sent"} = call(:send_to, ["bbt_listener", [1, 2]])
    assert_receive [1, 2]

    assert {:ok, ["refused", message]} = call(:send_to, ["logger", :boom])
    assert message =~ "{:send, logger}"
    assert {:ok, ["refused", message]} = call(:forged, [self()])
    assert message =~ "MAC"
    refute_received "forged"

    # a pid comes back as the same pid
    me = self()
    assert {:ok, [^me, "Pid"]} = call(:pid_back, [me])
  end

  test "nested calls on the same pool: run while a worker is idle, refused at once when none is" do
    # Elixir -> Python -> Elixir -> Python: the second call takes the idle worker
    assert {:ok, ["level", 1, "bottom"]} = call(:nested, [1])

    # one level deeper than there are workers: refused at once, never a deadlock
    {ms, result} =
      :timer.tc(fn -> call(:outcome, ["Bridge.CallbacksTest.Fns", "nested", [2]]) end)

    assert {:ok, ["error", "callback_raised", "Bridge.Error", message]} = result
    assert message =~ "nested_call"
    assert div(ms, 1000) < 5_000
    assert {:ok, 3} = call(:add, [1, 2])
  end

  test "a callback calling the session its call belongs to is refused at once" do
    Bridge.session(Cb, fn s ->
      Process.put(:test_session, s)

      assert {:ok, ["error", "callback_raised", "Bridge.Error", message]} =
               call(:outcome, ["Bridge.CallbacksTest.Fns", "in_session", []], session: s)

      assert message =~ "nested_call"
      assert {:ok, 3} = call(:add, [1, 2], session: s)
    end)
  end

  test "forged pids: a short MAC is refused, as a destination and in a result" do
    assert {:ok, ["refused", message]} = call(:short_mac, [self()])
    assert message =~ "MAC"

    capture_log(fn ->
      assert {:error, %Bridge.Error{kind: :bad_frame, reason: :bad_term}} =
               call(:short_mac_result, [self()])
    end)

    all_ready(Cb)
    assert {:ok, 3} = call(:add, [1, 2])
  end

  test "a callback frame whose arguments outnumber its arity is refused, not applied" do
    assert {:ok, ["error", "bad_callback_value", message]} = call(:wrong_arity, [])
    assert message =~ "not a list of 1"
    assert {:ok, 3} = call(:add, [1, 2])
  end

  test "a callback frame with an impossible arity is a protocol violation: the worker is replaced" do
    log =
      capture_log(fn ->
        assert {:error, %Bridge.Error{kind: :bad_frame}} = call(:huge_arity, [])
        all_ready(Cb)
      end)

    assert log =~ "killing it"
    assert {:ok, 3} = call(:add, [1, 2])
  end

  test "a caller that dies inside its callback: the handler is told, the worker freed" do
    capture_log(fn ->
      spawn(fn ->
        call(:outcome, ["Bridge.CallbacksTest.Fns", "die_now", []], timeout: :infinity)
      end)

      Process.sleep(300)
      eventually(fn -> Enum.all?(Bridge.workers(Cb), &(&1.phase == :ready)) end)
    end)

    assert {:ok, 3} = call(:add, [1, 2])
  end

  test "nested three deep on a pool of three" do
    start_supervised!({Bridge, bridge_opts(Cb3, pool_size: 3, callbacks: @allowed)}, id: :cb3)
    all_ready(Cb3, 3)
    Process.put(:test_pool, Cb3)

    assert {:ok, ["level", 2, ["level", 1, "bottom"]]} =
             Bridge.call({:bbt_callbacks, :nested}, [2], pool: Cb3)
  end

  test "a thousand callbacks in one call, and the worker's memory stays put" do
    assert {:ok, total} = call(:callbacks_in_a_loop, [1_000])
    assert total == 2 * Enum.sum(0..999)
    info = Enum.map(Bridge.workers(Cb), & &1.lent_slices)
    assert Enum.all?(info, &(&1 == 0))
  end

  test "a callback still running when the call times out: :timeout, the worker kept" do
    before = Enum.sort(worker_os_pids(Cb))

    log =
      capture_log(fn ->
        # the callback runs in this process: the call returns once it does
        assert {:error, %Bridge.Error{kind: :timeout}} =
                 call(:wait_in_elixir, [800], timeout: 300)

        eventually(fn -> Enum.all?(Bridge.workers(Cb), &(&1.phase == :ready)) end)
      end)

    assert log =~ "interrupting its handler"
    assert Enum.sort(worker_os_pids(Cb)) == before
    assert {:ok, 10} = call(:call, ["double", [5]])
    Process.sleep(200)
    refute_received _
  end

  test "a stream's generator calls back; the consumer runs it" do
    assert Bridge.stream({:bbt_callbacks, :stream_with_callbacks}, [5], pool: Cb)
           |> Enum.to_list() == [0, 2, 4, 6, 8]
  end
end
