defmodule Bridge.Test.BridgeCase do
  @moduledoc false
  # Helpers for the end-to-end tests: real Python workers over real Ports.

  import ExUnit.Assertions

  @handlers Path.expand("../handlers", __DIR__)

  def python, do: System.get_env("BEAMBRIDGE_PYTHON") || Path.expand(".venv/bin/python")
  def handlers_dir, do: @handlers

  # Options for a bridge named `name` running the test handlers. Arenas start at
  # 1 MiB here (8 MiB by default) to keep the suite's memory small.
  def bridge_opts(name, extra \\ []) do
    Keyword.merge(
      [
        name: name,
        python: python(),
        python_path: [@handlers],
        pool_size: 2,
        min_arena: 1024 * 1024
      ],
      extra
    )
  end

  # Mappings of shared objects (memfds) in an OS process (default: this BEAM).
  def memfd_mappings(os_pid \\ "self") do
    case File.read("/proc/#{os_pid}/maps") do
      {:ok, maps} -> maps |> String.split("\n") |> Enum.count(&(&1 =~ "/memfd:beambridge "))
      _ -> 0
    end
  end

  # Open descriptors of an OS process.
  def fd_count(os_pid), do: length(File.ls!("/proc/#{os_pid}/fd"))

  # Shared memory in use on the host (/proc/meminfo Shmem, bytes): memfd pages
  # count here until the last process lets go of them.
  def shmem_bytes do
    [kb] =
      Regex.run(~r/^Shmem:\s+(\d+) kB/m, File.read!("/proc/meminfo"), capture: :all_but_first)

    String.to_integer(kb) * 1024
  end

  def open_fds, do: length(File.ls!("/proc/self/fd"))

  # OS processes below this BEAM (port programs are children of erl_child_setup).
  def descendants(pid \\ String.to_integer(System.pid())) do
    children =
      for entry <- File.ls!("/proc"),
          Regex.match?(~r/\A\d+\z/, entry),
          ppid(entry) == pid,
          do: String.to_integer(entry)

    children ++ Enum.flat_map(children, &descendants/1)
  end

  defp ppid(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} ->
        # pid (comm) state ppid ...; comm may contain spaces and parentheses
        [_, rest] = String.split(stat, ") ", parts: 2)
        rest |> String.split(" ") |> Enum.at(1) |> String.to_integer()

      _ ->
        nil
    end
  end

  def alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} ->
        [_, rest] = String.split(stat, ") ", parts: 2)
        not String.starts_with?(rest, ["Z", "X"])

      _ ->
        false
    end
  end

  # Slices the bridge's callers have allocated so far.
  def arena_allocs(bridge) do
    {:ok, stats} = Bridge.Arena.stats(Bridge.Config.get(bridge).arena)
    stats.allocs
  end

  def worker_os_pids(bridge), do: bridge |> Bridge.workers() |> Enum.map(& &1.os_pid)

  # Waits until `fun` returns a truthy value, polling every 20 ms.
  def eventually(fun, timeout \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_eventually(fun, deadline)
  end

  defp do_eventually(fun, deadline) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      _ ->
        if System.monotonic_time(:millisecond) > deadline do
          flunk("condition not met in time")
        else
          Process.sleep(20)
          do_eventually(fun, deadline)
        end
    end
  end

  # Waits until every worker of `bridge` is ready again.
  def all_ready(bridge, size \\ 2) do
    eventually(fn ->
      workers = Bridge.workers(bridge)
      length(workers) == size and Enum.all?(workers, &(&1.phase == :ready))
    end)
  end

  # The mapping of /proc/self/maps that contains `address`, or nil.
  def mapping_of(address) do
    "/proc/self/maps"
    |> File.read!()
    |> String.split("\n", trim: true)
    |> Enum.find_value(fn line ->
      [range | rest] = String.split(line, " ", parts: 2)
      [lo, hi] = range |> String.split("-") |> Enum.map(&String.to_integer(&1, 16))

      if address >= lo and address < hi,
        do: String.trim(List.last(String.split(hd(rest), " ", parts: 5)))
    end)
  end

  # The permission flags ("r--s", "rw-s"...) of the mapping that contains `address`.
  def mapping_flags(address) do
    "/proc/self/maps"
    |> File.read!()
    |> String.split("\n", trim: true)
    |> Enum.find_value(fn line ->
      [range, flags | _] = String.split(line, " ", parts: 3)
      [lo, hi] = range |> String.split("-") |> Enum.map(&String.to_integer(&1, 16))
      if address >= lo and address < hi, do: flags
    end)
  end

  # Asserts `bin` is a zero-copy binary over a shared object (an arena slice).
  def assert_shared_binary(bin) do
    {:ok, address} = Bridge.NIF.binary_address(bin)
    mapping = mapping_of(address)
    assert mapping =~ "/memfd:beambridge", "binary at #{address} is in #{inspect(mapping)}"
    mapping
  end

  # Sends {:event, event, measurements, metadata} to this process for each of
  # `events` (Bridge.Telemetry), under handler `id`; detached when the test ends.
  def listen_telemetry(id, events) do
    me = self()
    fun = fn e, m, md, _ -> send(me, {:event, e, m, md}) end
    :ok = Bridge.Telemetry.attach_many(id, events, fun, nil)
    ExUnit.Callbacks.on_exit(fn -> Bridge.Telemetry.detach(id) end)
  end
end
