defmodule Bridge.SessionTest do
  # Sessions (protocol/SPEC.md §8.9): one worker for a run of calls, Python objects
  # kept for Elixir as %Bridge.Ref{}, released when the session ends, when a ref is
  # garbage-collected and when the session's owner dies. Real workers; what is alive
  # in the interpreter is read back from a WeakSet there.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Bridge.Test.BridgeCase

  @moduletag timeout: 120_000

  setup do
    start_supervised!({Bridge, bridge_opts(Sess, pool_size: 1)})
    all_ready(Sess, 1)
    :ok
  end

  defp call(fun, args, opts \\ []),
    do: Bridge.call({:bbt_sessions, fun}, args, opts ++ [pool: Sess])

  # Counters alive in the (only) worker, after a collection there; in `session`
  # when one holds the worker.
  defp live(session \\ nil) do
    opts = if session, do: [session: session], else: []
    {:ok, n} = call(:live, [], opts)
    n
  end

  test "a kept object lives across 100 calls of its session, all on one worker" do
    result =
      Bridge.session(Sess, fn s ->
        {:ok, %Bridge.Ref{} = counter} = call(:new_counter, [0], session: s)
        assert inspect(counter) =~ "#Bridge.Ref<session #{s.id}"
        assert {:ok, "Counter"} = call(:is_counter, [counter], session: s)

        pids =
          for i <- 1..100 do
            assert {:ok, ^i} = call(:incr, [counter], session: s)
            {:ok, pid} = call(:remember, [:last, i], session: s)
            pid
          end

        assert [_one_interpreter] = Enum.uniq(pids)
        assert {:ok, [100, _]} = call(:recall, [:last], session: s)
        call(:value, [counter], session: s)
      end)

    assert result == {:ok, 100}
  end

  test "what a session kept is released when it ends" do
    assert live() == 0

    Bridge.session(Sess, fn s ->
      {:ok, %{"a" => %Bridge.Ref{}, "b" => %Bridge.Ref{}, "n" => 1} = pair} =
        call(:pair, [1], session: s)

      {:ok, one} = call(:new_counter, [5], session: s)
      :erlang.garbage_collect()
      assert live(s) == 3
      # held until here: a ref nobody holds is released before the session ends
      assert {:ok, 6} = call(:incr, [one], session: s)
      assert {:ok, 2} = call(:incr, [pair["a"]], session: s)
    end)

    eventually(fn -> live() == 0 end)
  end

  test "a ref garbage-collected in Elixir releases its object while the session goes on" do
    Bridge.session(Sess, fn s ->
      {:ok, kept} = call(:new_counter, [0], session: s)

      # a process that gets a ref and exits: its heap, and the ref, go
      Task.async(fn -> {:ok, %Bridge.Ref{}} = call(:new_counter, [1], session: s) end)
      |> Task.await()

      eventually(fn -> live(s) == 1 end)
      # the one still held works
      assert {:ok, 1} = call(:incr, [kept], session: s)
    end)
  end

  test "a session whose owner crashes is released: its objects go, its worker returns" do
    test = self()

    capture_log(fn ->
      owner =
        spawn(fn ->
          Bridge.session(Sess, fn s ->
            refs = for i <- 1..3, do: elem(call(:new_counter, [i], session: s), 1)
            :erlang.garbage_collect()
            send(test, {:holding, live(s)})
            Process.sleep(:infinity)
            refs
          end)
        end)

      assert_receive {:holding, 3}, 10_000
      Process.exit(owner, :kill)
    end)

    # the worker is the pool's again (a plain call runs) and the objects are gone
    eventually(fn -> live() == 0 end)
  end

  test "calls of a session from several processes run one at a time on its worker" do
    Bridge.session(Sess, fn s ->
      pids =
        1..20
        |> Task.async_stream(fn i -> call(:remember, [i, i], session: s) end, max_concurrency: 8)
        |> Enum.map(fn {:ok, {:ok, pid}} -> pid end)

      assert [_] = Enum.uniq(pids)
      assert {:ok, [20, _]} = call(:recall, [20], session: s)
    end)
  end

  test "other calls never run on a reserved worker" do
    start_supervised!({Bridge, bridge_opts(Sess2, pool_size: 2)}, id: :sess2)
    all_ready(Sess2, 2)
    pid = fn opts -> Bridge.call({:bbt_handlers, :pid}, [], [pool: Sess2] ++ opts) end

    Bridge.session(Sess2, fn s ->
      {:ok, mine} = pid.(session: s)
      others = for _ <- 1..20, do: elem(pid.([]), 1)
      refute mine in others
    end)
  end

  test "refs and keep outside their session are refused with what to do" do
    {:ok, ref} = Bridge.session(Sess, fn s -> call(:new_counter, [0], session: s) end)

    # the session is over: its ref names nothing now
    assert {:error, %Bridge.Error{kind: :bad_call, reason: :no_session} = e} = call(:value, [ref])
    assert e.message =~ "session"

    # keep outside a session
    assert {:error, %Bridge.Error{kind: :bad_call, reason: :no_session} = e} =
             call(:new_counter, [0])

    assert e.message =~ "Bridge.session"

    # a ref of another session
    Bridge.session(Sess, fn s ->
      assert {:error, %Bridge.Error{reason: :no_session}} = call(:value, [ref], session: s)
    end)

    # a session that ended
    s = Bridge.session(Sess, fn s -> s end)
    assert {:error, %Bridge.Error{reason: :no_session}} = call(:value, [1], session: s)
    assert live() == 0
  end

  test "a session whose interpreter dies: :session_lost, then new sessions work" do
    capture_log(fn ->
      Bridge.session(Sess, fn s ->
        {:ok, _} = call(:new_counter, [0], session: s)
        assert {:error, %Bridge.Error{kind: :worker_died}} = call(:die, [], session: s)

        assert {:error, %Bridge.Error{kind: :worker_died, reason: :session_lost} = e} =
                 call(:value, [1], session: s)

        assert e.message =~ "start another session"
      end)
    end)

    all_ready(Sess, 1)

    assert {:ok, 1} =
             Bridge.session(Sess, fn s ->
               {:ok, c} = call(:new_counter, [0], session: s)
               call(:incr, [c], session: s)
             end)
  end

  test "a timeout its handler stops keeps the session and what it kept" do
    capture_log(fn ->
      assert {:ok, 1} =
               Bridge.session(Sess, fn s ->
                 {:ok, c} = call(:new_counter, [0], session: s)
                 assert {:error, %{kind: :timeout}} = call(:nap, [30], session: s, timeout: 200)
                 call(:incr, [c], session: s)
               end)
    end)
  end

  test "a session on a pool that does not exist, and bad session options" do
    assert {:error, %Bridge.Error{reason: :no_pool}} = Bridge.session(NoSuchPool, fn _ -> :x end)

    assert {:error, %Bridge.Error{reason: :badarg, field: :session}} =
             call(:live, [], session: :not_a_session)
  end
end
