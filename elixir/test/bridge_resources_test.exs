defmodule Bridge.ResourcesTest do
  # Shared memory, open fds and OS processes return to where they started: after a
  # bridge stops, after a worker crash, when the BEAM itself dies, and after a burst.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase
  import ExUnit.CaptureLog

  @moduletag timeout: 180_000
  @mib 1024 * 1024

  defp settle do
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    Process.sleep(50)
  end

  defp snapshot do
    settle()

    %{
      maps: memfd_mappings(),
      fds: open_fds(),
      procs: Enum.sort(descendants()),
      shm: File.ls!("/dev/shm") |> Enum.sort()
    }
  end

  test "a stopped bridge leaves no worker, mapping or fd behind; a crash leaves nothing extra" do
    before = snapshot()

    {:ok, sup} = Bridge.start_link(bridge_opts(Res, pool_size: 2))
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
    assert running.maps > before.maps

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
    # the dead worker's arenas are unmapped here once nothing points into them
    assert after_crash.maps <= running.maps
    assert after_crash.fds == running.fds
    assert length(after_crash.procs) == length(running.procs)
    refute victim.os_pid in after_crash.procs

    # the pool still works through shared memory
    {:ok, back} = Bridge.call({:bbt_handlers, :identity}, [big], pool: Res)
    assert back == big
    back = nil
    _ = back

    os_pids = worker_os_pids(Res)
    ref = Process.monitor(sup)
    Process.unlink(sup)
    Process.exit(sup, :shutdown)
    assert_receive {:DOWN, ^ref, :process, ^sup, _}, 10_000

    for pid <- os_pids, do: refute(alive?(pid))
    final = snapshot()
    assert final.maps == before.maps
    assert final.fds == before.fds
    assert final.procs == before.procs
    assert final.shm == before.shm
  end

  test "stopping a bridge while a call is in flight answers the caller and leaves nothing" do
    before = snapshot()
    {:ok, sup} = Bridge.start_link(bridge_opts(ResBusy, pool_size: 1))
    [%{os_pid: os_pid}] = Bridge.workers(ResBusy)

    task =
      Task.async(fn ->
        Bridge.call({:bbt_handlers, :sleep}, [10, Bridge.Buffer.new(:binary.copy("b", @mib))],
          pool: ResBusy
        )
      end)

    eventually(fn -> Enum.any?(Bridge.workers(ResBusy), &(&1.phase == :busy)) end)

    Process.unlink(sup)
    ref = Process.monitor(sup)
    Process.exit(sup, :shutdown)
    assert_receive {:DOWN, ^ref, :process, ^sup, _}, 10_000
    assert {:error, %Bridge.Error{kind: :worker_died}} = Task.await(task)
    refute alive?(os_pid)
    final = snapshot()
    assert final.maps == before.maps
    assert final.procs == before.procs
  end

  test "a list of 2,000 binaries of 100 KB round-trips with the open-files limit at 256" do
    # A BEAM of its own, so that it and its worker run under the limit.
    ebin = Path.join(:code.lib_dir(:beambridge), "ebin") |> to_string()

    script = """
    {:ok, _} = Application.ensure_all_started(:beambridge)
    {:ok, _} = Bridge.start_link(name: Files, python: #{inspect(python())},
      python_path: [#{inspect(handlers_dir())}], pool_size: 1, timeout: 60_000)
    [%{os_pid: w}] = Bridge.workers(Files)
    fds = fn pid -> length(File.ls!("/proc/\#{pid}/fd")) end
    {beam0, worker0} = {fds.("self"), fds.(w)}
    images = for i <- 1..2_000, do: :binary.copy(<<rem(i, 256)>>, 100_000)
    {:ok, back} = Bridge.call({:bbt_handlers, :identity}, [images], pool: Files)
    same = back == images
    {beam1, worker1} = {fds.("self"), fds.(w)}
    one = :crypto.strong_rand_bytes(1_048_576)
    {:ok, one_back} = Bridge.call({:bbt_handlers, :identity}, [one], pool: Files)
    limit = Regex.run(~r/Max open files\\s+(\\d+)/, File.read!("/proc/\#{w}/limits"))
    IO.puts("RESULT \#{same} \#{one_back == one} \#{beam1 - beam0} \#{worker1 - worker0} \#{Enum.at(limit, 1)}")
    """

    {out, status} =
      System.cmd("sh", ["-c", ~s(ulimit -n 256 && exec elixir -pa "$0" -e "$1"), ebin, script],
        stderr_to_stdout: true
      )

    assert status == 0, out

    [_, same, one, beam_fds, worker_fds, limit] =
      Regex.run(~r/RESULT (\S+) (\S+) (-?\d+) (-?\d+) (\d+)/, out)

    assert {same, one, limit} == {"true", "true", "256"}, out
    assert String.to_integer(beam_fds) <= 16
    assert String.to_integer(worker_fds) <= 16
  end

  test "after a burst of 1 GiB, shared memory is back near its idle size within seconds" do
    {:ok, sup} = Bridge.start_link(bridge_opts(ResBurst, pool_size: 1, timeout: 60_000))
    settle()
    idle = shmem_bytes()

    # 15 results of 64 MiB held at once: the worker's arenas grow to ~1 GiB, its limit
    held =
      for i <- 1..15 do
        {:ok, r} = Bridge.call({:bbt_handlers, :make_bytes}, [64 * @mib, i], pool: ResBurst)
        r
      end

    peak = shmem_bytes()
    assert peak - idle >= 900 * @mib
    assert Enum.map(held, &:binary.at(&1, 0)) == Enum.to_list(1..15)
    held = nil
    _ = held
    settle()

    # the worker trims arenas empty for 2 s when idle for 1 s
    eventually(fn -> shmem_bytes() - idle < 48 * @mib end, 10_000)

    ref = Process.monitor(sup)
    Process.unlink(sup)
    Process.exit(sup, :shutdown)
    assert_receive {:DOWN, ^ref, :process, ^sup, _}, 10_000
  end

  @tag :beam_death
  test "kill -9 of the BEAM and its workers mid-call leaves nothing behind" do
    ebin = Path.join(:code.lib_dir(:beambridge), "ebin") |> to_string()
    settle()
    shm_before = File.ls!("/dev/shm") |> Enum.sort()
    shmem_before = shmem_bytes()

    script = """
    {:ok, _} = Application.ensure_all_started(:beambridge)
    {:ok, _} = Bridge.start_link(name: Doomed, python: #{inspect(python())},
      python_path: [#{inspect(handlers_dir())}], pool_size: 2, timeout: 60_000)
    big = :binary.copy("d", 64_000_000)
    {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: Doomed)
    held = for i <- 1..4, do: Bridge.call!({:bbt_handlers, :make_bytes}, [64_000_000, i], pool: Doomed)
    pids = Bridge.workers(Doomed) |> Enum.map(& &1.os_pid) |> Enum.join(",")
    spawn(fn -> Bridge.call({:bbt_handlers, :sleep}, [30, Bridge.Buffer.new(big)], pool: Doomed) end)
    Process.sleep(300)
    IO.puts("READY #{"\#{System.pid()}"} \#{pids} \#{length(held)}")
    Process.sleep(:infinity)
    """

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        {:line, 4096},
        {:args, ["-pa", ebin, "-e", script]}
      ])

    # Whatever happens below, the other BEAM does not outlive the test.
    {:os_pid, child} = Port.info(port, :os_pid)

    on_exit(fn -> System.cmd("kill", ["-9", Integer.to_string(child)], stderr_to_stdout: true) end)

    {beam, workers} =
      receive do
        {^port, {:data, {:eol, "READY " <> rest}}} ->
          [beam, pids, _] = String.split(rest, " ")
          {String.to_integer(beam), pids |> String.split(",") |> Enum.map(&String.to_integer/1)}
      after
        60_000 -> flunk("the other BEAM did not get ready")
      end

    assert shmem_bytes() - shmem_before > 256 * @mib

    System.cmd("kill", ["-9" | Enum.map([beam | workers], &Integer.to_string/1)])
    assert_receive {^port, {:exit_status, _}}, 5_000
    eventually(fn -> not Enum.any?(workers, &alive?/1) end, 2_000)

    # a new bridge starts; nothing of the dead run is left: nothing named, and the
    # shared memory is back where it was
    {:ok, sup} = Bridge.start_link(bridge_opts(After, pool_size: 1))
    eventually(fn -> shmem_bytes() - shmem_before < 48 * @mib end, 5_000)
    assert File.ls!("/dev/shm") |> Enum.sort() == shm_before
    ref = Process.monitor(sup)
    Process.unlink(sup)
    Process.exit(sup, :shutdown)
    assert_receive {:DOWN, ^ref, :process, ^sup, _}, 10_000
  end
end
