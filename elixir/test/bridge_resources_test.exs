defmodule Bridge.ResourcesTest do
  # /dev/shm, open fds and OS processes return to where they started: after a
  # bridge stops, after a worker crash, and when the BEAM itself dies.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase
  import ExUnit.CaptureLog

  @moduletag timeout: 120_000
  @prefix "bbtres"
  @mib 1024 * 1024

  defp settle do
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    Process.sleep(50)
  end

  defp snapshot do
    settle()
    %{shm: shm_names(@prefix), fds: open_fds(), procs: Enum.sort(descendants())}
  end

  test "a stopped bridge leaves no worker, region or fd behind; a crash leaves nothing extra" do
    before = snapshot()

    {:ok, sup} = Bridge.start_link(bridge_opts(Res, @prefix, pool_size: 2))
    big = :binary.copy("r", 4 * @mib)

    for _ <- 1..5 do
      {:ok, back} = Bridge.call({:bbt_handlers, :identity}, [big], pool: Res)
      assert back == big
    end

    {:ok, t} = Bridge.call({:bbt_handlers, :make_tensor}, ["<f4", [512, 512]], pool: Res)

    assert t.shape == {512, 512}
    workers = Bridge.workers(Res)
    running = snapshot()
    assert length(running.procs) >= length(before.procs) + 2
    assert running.shm != []

    # crash one worker while it is idle
    [victim | _] = workers

    capture_log(fn ->
      System.cmd("kill", ["-9", Integer.to_string(victim.os_pid)])

      eventually(fn ->
        Enum.find(Bridge.workers(Res), &(&1.id == victim.id)).os_pid != victim.os_pid
      end)

      all_ready(Res)
    end)

    after_crash = snapshot()
    refute Enum.any?(after_crash.shm, &String.contains?(&1, "-#{victim.os_pid}-"))
    # the dead worker's argument regions (BEAM-owned) are gone too
    for name <- victim.argument_regions, do: refute(File.exists?("/dev/shm" <> name))
    assert after_crash.fds == running.fds
    assert length(after_crash.procs) == length(running.procs)
    refute victim.os_pid in after_crash.procs

    # the pool still works through regions
    {:ok, back} = Bridge.call({:bbt_handlers, :identity}, [big], pool: Res)
    assert back == big

    os_pids = worker_os_pids(Res)
    ref = Process.monitor(sup)
    Process.unlink(sup)
    Process.exit(sup, :shutdown)
    assert_receive {:DOWN, ^ref, :process, ^sup, _}, 10_000

    for pid <- os_pids, do: refute(alive?(pid))
    final = snapshot()
    assert final.shm == before.shm
    assert final.fds == before.fds
    assert final.procs == before.procs
  end

  test "stopping a bridge while a call is in flight answers the caller and leaves nothing" do
    before = snapshot()
    {:ok, sup} = Bridge.start_link(bridge_opts(ResBusy, @prefix, pool_size: 1))
    [%{os_pid: os_pid}] = Bridge.workers(ResBusy)
    task = Task.async(fn -> Bridge.call({:bbt_handlers, :sleep}, [10, :x], pool: ResBusy) end)
    eventually(fn -> Enum.any?(Bridge.workers(ResBusy), &(&1.phase == :busy)) end)

    Process.unlink(sup)
    ref = Process.monitor(sup)
    Process.exit(sup, :shutdown)
    assert_receive {:DOWN, ^ref, :process, ^sup, _}, 10_000
    assert {:error, %Bridge.Error{kind: :worker_died}} = Task.await(task)
    refute alive?(os_pid)
    final = snapshot()
    assert final.shm == before.shm
    assert final.procs == before.procs
  end

  @tag :beam_death
  test "when the BEAM dies, its workers exit within 2 s and leave no region behind" do
    prefix = "bbtdeath"
    ebin = Path.join(:code.lib_dir(:beambridge), "ebin") |> to_string()

    script = """
    {:ok, _} = Application.ensure_all_started(:beambridge)
    {:ok, _} = Bridge.start_link(name: Doomed, python: #{inspect(python())},
      python_path: [#{inspect(handlers_dir())}], pool_size: 2, shm_prefix: #{inspect(prefix)})
    big = :binary.copy("d", 1_000_000)
    {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: Doomed)
    {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: Doomed)
    pids = Bridge.workers(Doomed) |> Enum.map(& &1.os_pid) |> Enum.join(",")
    IO.puts("READY #{"\#{System.pid()}"} \#{pids}")
    Process.sleep(:infinity)
    """

    elixir = System.find_executable("elixir")

    port =
      Port.open({:spawn_executable, elixir}, [
        :binary,
        :exit_status,
        {:line, 4096},
        {:args, ["-pa", ebin, "-e", script]}
      ])

    {beam, workers} =
      receive do
        {^port, {:data, {:eol, "READY " <> rest}}} ->
          [beam, pids] = String.split(rest, " ")
          {String.to_integer(beam), pids |> String.split(",") |> Enum.map(&String.to_integer/1)}
      after
        30_000 -> flunk("the other BEAM did not get ready")
      end

    regions = shm_names(prefix)
    assert Enum.any?(regions, &String.contains?(&1, "-#{beam}-")), "BEAM argument regions exist"
    assert Enum.any?(regions, fn r -> Enum.any?(workers, &String.contains?(r, "-#{&1}-")) end)

    System.cmd("kill", ["-9", Integer.to_string(beam)])
    killed_at = System.monotonic_time(:millisecond)
    assert_receive {^port, {:exit_status, _}}, 5_000

    eventually(fn -> not Enum.any?(workers, &alive?/1) end, 2_000)
    gone_after = System.monotonic_time(:millisecond) - killed_at
    assert gone_after <= 2_000

    # no region of that run is left, neither the workers' nor the dead BEAM's
    # argument regions (the workers reap those: SPEC §7.5)
    deadline = killed_at + 2_500

    wait_empty = fn wait_empty ->
      cond do
        shm_names(prefix) == [] -> :ok
        System.monotonic_time(:millisecond) > deadline -> {:left, shm_names(prefix)}
        true -> Process.sleep(20) && wait_empty.(wait_empty)
      end
    end

    result = wait_empty.(wait_empty)
    # Leave nothing for the rest of the suite even when this fails.
    Enum.each(shm_names(prefix), &Bridge.NIF.unlink("/" <> &1))

    assert result == :ok,
           "left behind: #{inspect(result)} (dead BEAM #{beam}, its workers #{inspect(workers)})"
  end
end
