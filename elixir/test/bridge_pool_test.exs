defmodule Bridge.PoolTest do
  # The pool and the worker's life (SPEC §8): concurrency, backpressure,
  # exceptions, timeouts, crashes, logs.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase
  import ExUnit.CaptureLog

  @moduletag timeout: 120_000

  setup do
    start_supervised!({Bridge, bridge_opts(Pool2, pool_size: 2)})
    :ok
  end

  defp call(fun, args, opts \\ []),
    do: Bridge.call({:bbt_handlers, fun}, args, [pool: Pool2] ++ opts)

  test "200 concurrent callers over a pool of 2 all get their own result" do
    results =
      1..200
      |> Task.async_stream(fn i -> {i, call(:add, [i, 1_000_000])} end,
        max_concurrency: 200,
        timeout: 30_000
      )
      |> Enum.map(fn {:ok, r} -> r end)

    for {i, result} <- results, do: assert(result == {:ok, i + 1_000_000})
    assert length(results) == 200
  end

  test "past max_queue, callers get :overloaded at once" do
    start_supervised!(
      {Bridge, bridge_opts(Tiny, pool_size: 1, max_queue: 2)},
      id: :tiny
    )

    slow =
      for i <- 1..3,
          do: Task.async(fn -> Bridge.call({:bbt_handlers, :sleep}, [0.5, i], pool: Tiny) end)

    # one running, two queued
    eventually(fn -> :sys.get_state(Tiny).waiting |> map_size() == 2 end)

    {elapsed, result} =
      :timer.tc(fn -> Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Tiny) end)

    assert {:error, %Bridge.Error{kind: :overloaded}} = result
    assert elapsed < 50_000

    assert Enum.map(slow, &Task.await/1) == [{:ok, 1}, {:ok, 2}, {:ok, 3}]
    assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Tiny)
  end

  test "a queued caller that dies is dropped; a caller that dies mid-call does not wedge the worker" do
    start_supervised!({Bridge, bridge_opts(One, pool_size: 1)}, id: :one)

    busy = Task.async(fn -> Bridge.call({:bbt_handlers, :sleep}, [0.3, :first], pool: One) end)
    eventually(fn -> Enum.any?(Bridge.workers(One), &(&1.phase == :busy)) end)

    queued = spawn(fn -> Bridge.call({:bbt_handlers, :sleep}, [5, :never], pool: One) end)
    eventually(fn -> :sys.get_state(One).waiting |> map_size() == 1 end)
    Process.exit(queued, :kill)
    eventually(fn -> :sys.get_state(One).waiting |> map_size() == 0 end)

    assert Task.await(busy) == {:ok, :first}

    # dies mid-call
    mid = spawn(fn -> Bridge.call({:bbt_handlers, :sleep}, [0.2, :lost], pool: One) end)
    eventually(fn -> Enum.any?(Bridge.workers(One), &(&1.phase == :busy)) end)
    Process.exit(mid, :kill)
    assert {:ok, :next} = Bridge.call({:bbt_handlers, :sleep}, [0, :next], pool: One)
  end

  test "a call racing with the bridge's stop gets :no_pool, as one made after it does" do
    start_supervised!({Bridge, bridge_opts(Stopping, pool_size: 1)}, id: :stopping)
    big = :binary.copy("s", 200_000)
    assert {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: Stopping)
    # the pool closes its arenas when it stops; a caller that read the config just
    # before writes into closed arenas
    Bridge.Arena.close(Bridge.Config.get(Stopping).arena)

    assert {:error, %Bridge.Error{kind: :bad_call, reason: :no_pool} = e} =
             Bridge.call({:bbt_handlers, :identity}, [big], pool: Stopping)

    assert Exception.message(e) =~ "no bridge named"
    stop_supervised!(:stopping)

    assert {:error, %Bridge.Error{kind: :bad_call, reason: :no_pool}} =
             Bridge.call({:bbt_handlers, :identity}, [big], pool: Stopping)
  end

  test "a Python exception comes back with type, message and a traceback naming the handler" do
    assert {:error, %Bridge.Error{kind: :python_exception} = e} = call(:fail, ["it broke"])
    assert e.python_type == "ValueError"
    assert e.message =~ "ValueError: it broke"
    assert e.traceback =~ "bbt_handlers.py"
    assert e.traceback =~ ~r/line \d+, in inner/
    assert e.traceback =~ ~r/line \d+, in fail/

    assert_raise Bridge.Error, ~r/ValueError: it broke/, fn ->
      Bridge.call!({:bbt_handlers, :fail}, ["it broke"], pool: Pool2)
    end

    assert Bridge.call!({:bbt_handlers, :add}, [2, 4], pool: Pool2) == 6
  end

  test "unknown modules and functions are :bad_call errors" do
    assert {:error, %Bridge.Error{kind: :bad_call, reason: :no_module}} =
             Bridge.call({:bbt_no_such_module, :f}, [], pool: Pool2)

    assert {:error, %Bridge.Error{kind: :bad_call, reason: :no_function}} =
             Bridge.call({:bbt_handlers, :no_such_function}, [], pool: Pool2)

    assert {:ok, 3} = Bridge.call({"bbt_handlers", "add"}, [1, 2], pool: Pool2)
  end

  test "a timeout with cancel_grace 0 kills and replaces the worker; the late answer reaches nobody" do
    start_supervised!({Bridge, bridge_opts(Solo, pool_size: 1, cancel_grace: 0)}, id: :solo)
    [before] = worker_os_pids(Solo)

    log =
      capture_log(fn ->
        {elapsed, result} =
          :timer.tc(fn ->
            Bridge.call({:bbt_handlers, :sleep}, [1.0, :late], pool: Solo, timeout: 200)
          end)

        assert {:error, %Bridge.Error{kind: :timeout}} = result
        assert elapsed < 600_000

        # the next call on the (only) worker gets its own answer, never :late
        assert {:ok, :mine} = Bridge.call({:bbt_handlers, :sleep}, [0, :mine], pool: Solo)
      end)

    assert log =~ "timed out"
    [after_] = worker_os_pids(Solo)
    assert after_ != before
    refute alive?(before)
    Process.sleep(1_200)
    refute_received _
    assert {:ok, 7} = Bridge.call({:bbt_handlers, :add}, [3, 4], pool: Solo)
  end

  test "a call waiting in the queue past its timeout gets :timeout" do
    start_supervised!({Bridge, bridge_opts(Q1, pool_size: 1)}, id: :q1)
    busy = Task.async(fn -> Bridge.call({:bbt_handlers, :sleep}, [0.5, :a], pool: Q1) end)
    eventually(fn -> Enum.any?(Bridge.workers(Q1), &(&1.phase == :busy)) end)

    assert {:error, %Bridge.Error{kind: :timeout}} =
             Bridge.call({:bbt_handlers, :add}, [1, 1], pool: Q1, timeout: 100)

    assert Task.await(busy) == {:ok, :a}
  end

  test "kill -9 of a worker mid-call: :worker_died, arenas reclaimed, the pool recovers" do
    # a large result first, so the worker has an arena
    {:ok, big} = call(:make_bytes, [1_000_000, 3])
    assert byte_size(big) == 1_000_000
    pids = worker_os_pids(Pool2)

    capture_log(fn ->
      task = Task.async(fn -> call(:sleep, [5, :never]) end)
      victim = eventually(fn -> Enum.find(Bridge.workers(Pool2), &(&1.phase == :busy)) end)
      System.cmd("kill", ["-9", Integer.to_string(victim.os_pid)])

      assert {:error, %Bridge.Error{kind: :worker_died}} = Task.await(task)
      all_ready(Pool2)
    end)

    assert Enum.sort(worker_os_pids(Pool2)) != Enum.sort(pids)
    # binaries read from the dead worker's arena stay valid
    assert big == :binary.copy(<<3>>, 1_000_000)
    for i <- 1..20, do: assert({:ok, ^i} = call(:add, [i, 0]))
  end

  test "os._exit in a handler: :worker_died, then later calls work" do
    capture_log(fn ->
      assert {:error, %Bridge.Error{kind: :worker_died} = e} = call(:exit_now, [7])
      assert e.message =~ "status 7"
      all_ready(Pool2)
    end)

    assert {:ok, 5} = call(:add, [2, 3])
  end

  for kind <- ["garbage", "unknown_atom", "wrong_id"] do
    test "a control frame that breaks SPEC §8 (#{kind}) is :bad_frame and the worker is replaced" do
      [w1, w2] = worker_os_pids(Pool2)

      log =
        capture_log(fn ->
          assert {:error, %Bridge.Error{kind: :bad_frame}} = call(:forge, [unquote(kind)])
          all_ready(Pool2)
        end)

      assert log =~ "killing it"
      assert length(Enum.uniq([w1, w2] ++ worker_os_pids(Pool2))) == 3
      assert {:ok, 3} = call(:add, [1, 2])
    end
  end

  test "a result atom the BEAM does not know is a :bad_call; the worker is kept (SPEC §10)" do
    pids = worker_os_pids(Pool2)

    assert {:error, %Bridge.Error{kind: :bad_call, reason: :unknown_atom}} =
             call(:returns_new_atom, [])

    assert {:ok, 3} = call(:add, [1, 2])
    assert Enum.sort(worker_os_pids(Pool2)) == Enum.sort(pids)
  end

  test "a handler's stdout and stderr are logged with the worker id" do
    log = capture_log(fn -> assert {:ok, "done"} = call(:chatty, ["hello"]) end)

    assert log =~
             ~r/beambridge worker Bridge\.PoolTest\.Pool2\.\d stdout: stdout says hello|Pool2\.\d stdout: stdout says hello/

    assert log =~ ~r/Pool2\.\d stderr: stderr says hello/
  end

  test "workers ask malloc for huge pages unless :huge_pages is false; a tunable already set is kept" do
    assert {:ok, "glibc.malloc.hugetlb=1"} =
             Bridge.call({:os, :getenvb}, ["GLIBC_TUNABLES"], pool: Pool2)

    start_supervised!({Bridge, bridge_opts(NoHuge, pool_size: 1, huge_pages: false)},
      id: :no_huge
    )

    assert {:ok, nil} = Bridge.call({:os, :getenvb}, ["GLIBC_TUNABLES"], pool: NoHuge)

    System.put_env("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")

    try do
      start_supervised!({Bridge, bridge_opts(Tuned, pool_size: 1)}, id: :tuned)

      assert {:ok, "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"} =
               Bridge.call({:os, :getenvb}, ["GLIBC_TUNABLES"], pool: Tuned)
    after
      System.delete_env("GLIBC_TUNABLES")
    end

    assert {:error, %Bridge.Error{kind: :bad_call, reason: :bad_option, field: :huge_pages}} =
             Bridge.start_link(bridge_opts(BadHuge, huge_pages: :yes))
  end

  test ":heap_keep: a worker keeps the small-object memory a call freed, and gives it back when idle" do
    start_supervised!({Bridge, bridge_opts(Keep, pool_size: 1, spin_us: 0)}, id: :keep)
    assert {:ok, 300_000} = Bridge.call({:bbt_handlers, :churn}, [300_000], pool: Keep)
    assert {:ok, kept} = Bridge.call({:bbt_handlers, :heap_kept}, [], pool: Keep)
    # most of the ~60 MB the call made and freed
    assert kept > 32 * 1_048_576
    # a second without calls: the worker's idle work gives it back
    Process.sleep(2_500)
    assert {:ok, 0} = Bridge.call({:bbt_handlers, :heap_kept}, [], pool: Keep)

    start_supervised!({Bridge, bridge_opts(Keep0, pool_size: 1, heap_keep: 0)}, id: :keep0)
    assert {:ok, "0"} = Bridge.call({:os, :getenvb}, ["BEAMBRIDGE_HEAP_KEEP"], pool: Keep0)
    assert {:ok, 300_000} = Bridge.call({:bbt_handlers, :churn}, [300_000], pool: Keep0)
    assert {:ok, 0} = Bridge.call({:bbt_handlers, :heap_kept}, [], pool: Keep0)

    assert {:error, %Bridge.Error{kind: :bad_call, reason: :bad_option, field: :heap_keep}} =
             Bridge.start_link(bridge_opts(BadKeep, heap_keep: -1))
  end

  test ":spin_us reaches the workers; :auto leaves it to them, even over an inherited value" do
    start_supervised!({Bridge, bridge_opts(Spin0, pool_size: 1, spin_us: 0)}, id: :spin0)
    assert {:ok, "0"} = Bridge.call({:os, :getenvb}, ["BEAMBRIDGE_SPIN_US"], pool: Spin0)

    System.put_env("BEAMBRIDGE_SPIN_US", "777")

    try do
      start_supervised!({Bridge, bridge_opts(SpinAuto, pool_size: 1)}, id: :spin_auto)
      assert {:ok, nil} = Bridge.call({:os, :getenvb}, ["BEAMBRIDGE_SPIN_US"], pool: SpinAuto)
    after
      System.delete_env("BEAMBRIDGE_SPIN_US")
    end

    for bad <- [-1, 1_000_001, 2.5, "50"] do
      assert {:error, %Bridge.Error{reason: :bad_option, field: :spin_us} = e} =
               Bridge.start_link(bridge_opts(BadSpin, spin_us: bad))

      assert Exception.message(e) =~ "microseconds"
    end
  end

  # An interpreter whose worker claims protocol `version` in its first frame.
  defp claiming(version) do
    path = Path.join(System.tmp_dir!(), "bb-claims-#{System.unique_integer([:positive])}")

    File.write!(path, """
    #!/bin/sh
    [ "$*" = "-m beambridge.worker" ] || exec #{python()} "$@"
    exec #{python()} -c 'import runpy, beambridge.control as c
    c.ready = lambda pid: (c.A_READY, pid, #{version})
    runpy.run_module("beambridge.worker", run_name="__main__")'
    """)

    File.chmod!(path, 0o755)
    on_exit(fn -> File.rm(path) end)
    path
  end

  test "a worker of another protocol minor works with this BEAM; another major is refused" do
    # 2.1: no lane (2.2), calls on the pipe
    start_supervised!({Bridge, bridge_opts(OldMinor, pool_size: 1, python: claiming("(2, 1)"))})
    assert Bridge.call({:bbt_handlers, :add}, [2, 3], pool: OldMinor) == {:ok, 5}
    assert [%{lane: false}] = Bridge.workers(OldMinor)

    # streams are 2.3: refused before the worker sees them, saying why
    stream = Bridge.Stream.from(1..3)
    assert {:error, e} = Bridge.call({:bbt_streams, :total}, [stream], pool: OldMinor)
    assert {e.kind, e.reason, e.value} == {:bad_call, :old_worker, "2.1"}
    assert e.message =~ "streams need 2.3"

    e =
      assert_raise Bridge.Error, fn ->
        Enum.to_list(Bridge.stream({:bbt_streams, :count}, [3], pool: OldMinor))
      end

    assert e.reason == :old_worker
    assert Bridge.call({:bbt_handlers, :add}, [2, 3], pool: OldMinor) == {:ok, 5}

    # 3.0: refused at start, naming both versions
    assert start_failure(bridge_opts(OtherMajor, python: claiming("(3, 0)"))) =~
             "it speaks protocol 3.0 and this BEAM speaks #{Bridge.Control.protocol_version()}"

    # and the other way: a worker told of a BEAM of another major refuses it
    assert start_failure(bridge_opts(OtherBeam, python: claiming_beam("3.0"))) =~
             "the BEAM speaks protocol 3.0 and this worker speaks #{Bridge.Control.protocol_version()}"
  end

  # The message of the :start_failed error a bridge's first worker stops it with.
  defp start_failure(opts) do
    assert {:error, {%Bridge.Error{kind: :start_failed} = e, _child}} =
             start_supervised({Bridge, opts})

    e.message
  end

  # An interpreter whose worker is told the BEAM speaks protocol `version`.
  defp claiming_beam(version) do
    path = Path.join(System.tmp_dir!(), "bb-beam-#{System.unique_integer([:positive])}")
    File.write!(path, "#!/bin/sh\nBEAMBRIDGE_PROTOCOL=#{version} exec #{python()} \"$@\"\n")
    File.chmod!(path, 0o755)
    on_exit(fn -> File.rm(path) end)
    path
  end

  test "start_link fails with :start_failed for a missing interpreter or one without beambridge" do
    assert {:error, %Bridge.Error{kind: :start_failed} = e} =
             Bridge.start_link(bridge_opts(Missing, python: "/nonexistent/bin/python3"))

    assert e.message =~ "/nonexistent/bin/python3"

    # the system interpreter outside the venv cannot import beambridge
    system_python = System.find_executable("python3")

    if system_python &&
         match?(
           {_, 1},
           System.cmd(system_python, ["-c", "import beambridge"],
             stderr_to_stdout: true,
             env: [{"PYTHONPATH", ""}]
           )
         ) do
      {elapsed, {:error, %Bridge.Error{kind: :start_failed} = e}} =
        :timer.tc(fn -> Bridge.start_link(bridge_opts(NoPkg, python: system_python)) end)

      assert e.message =~ system_python
      assert e.message =~ "No module named 'beambridge'"
      assert elapsed < 5_000_000
    end
  end
end
