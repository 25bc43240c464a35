defmodule Bridge.Memory do
  @moduledoc false
  # How many bytes a new shared object may take (protocol/SPEC.md §1).
  #
  # Arenas are memfds: their pages are not counted against /dev/shm but against
  # the memory of the machine and of the process's cgroup. Inside a container with
  # a memory limit, reserving pages past it does not fail with ENOSPC: the OOM
  # killer ends the process that asked, here the BEAM. So before an arena is made,
  # its size is checked against what is left: MemAvailable, and limit minus usage
  # of this cgroup and each of its ancestors (cgroup v2 memory.max/memory.current,
  # v1 memory.limit_in_bytes/memory.usage_in_bytes), less a margin for everything
  # else the node allocates. Past that, the arena is made smaller or not at all
  # (:no_space, a value then goes inline or is refused with a message to lower
  # :arena_limit).

  @margin 64 * 1024 * 1024
  @unlimited 4_611_686_018_427_387_904

  @doc false
  # Bytes a new shared object may take now (0 when none).
  @spec headroom() :: non_neg_integer()
  def headroom do
    free = min(mem_available(), cgroup_headroom())
    max(free - @margin, 0)
  end

  @doc false
  @spec margin() :: pos_integer()
  def margin, do: @margin

  defp mem_available do
    with {:ok, text} <- File.read("/proc/meminfo"),
         [_, kb] <- Regex.run(~r/^MemAvailable:\s+(\d+) kB/m, text) do
      String.to_integer(kb) * 1024
    else
      _ -> @unlimited
    end
  end

  defp cgroup_headroom do
    with {:ok, cgroups} <- File.read("/proc/self/cgroup"),
         {:ok, mounts} <- File.read("/proc/self/mountinfo") do
      dirs = cgroup_dirs(cgroups, mounts)
      dirs |> Enum.map(&dir_headroom/1) |> Enum.min(fn -> @unlimited end)
    else
      _ -> @unlimited
    end
  end

  # The memory cgroup directories of this process and its ancestors, with the file
  # names of their limit and usage.
  defp cgroup_dirs(cgroups, mounts) do
    for line <- String.split(cgroups, "\n", trim: true),
        [_, controllers, path] <- [String.split(line, ":", parts: 3)],
        {version, mount} <- mount_of(controllers, mounts),
        dir <- ancestors(mount, path),
        do: {version, dir}
  end

  # v2: "0::/path" on the cgroup2 mount; v1: "N:memory:/path" on the memory mount.
  defp mount_of("", mounts), do: find_mount(mounts, "cgroup2", nil, :v2)

  defp mount_of(controllers, mounts) do
    if "memory" in String.split(controllers, ","),
      do: find_mount(mounts, "cgroup", "memory", :v1),
      else: []
  end

  # mountinfo: id parent major:minor root mount_point options ... - fstype source super_options
  defp find_mount(mounts, fstype, option, version) do
    mounts
    |> String.split("\n", trim: true)
    |> Enum.flat_map(fn line ->
      case String.split(line, " - ", parts: 2) do
        [left, right] ->
          fields = String.split(left, " ")
          [type, _source, super | _] = String.split(right, " ") ++ ["", ""]

          if type == fstype and (option == nil or option in String.split(super, ",")) and
               Enum.at(fields, 3) == "/",
             do: [{version, Enum.at(fields, 4)}],
             else: []

        _ ->
          []
      end
    end)
    |> Enum.take(1)
  end

  defp ancestors(mount, path) do
    parts = String.split(path, "/", trim: true)
    for n <- 0..length(parts), do: Path.join([mount | Enum.take(parts, n)])
  end

  defp dir_headroom({:v2, dir}), do: limit_minus_usage(dir, "memory.max", "memory.current")

  defp dir_headroom({:v1, dir}),
    do: limit_minus_usage(dir, "memory.limit_in_bytes", "memory.usage_in_bytes")

  defp limit_minus_usage(dir, limit_file, usage_file) do
    with {:ok, limit} <- read_int(Path.join(dir, limit_file)),
         {:ok, usage} <- read_int(Path.join(dir, usage_file)) do
      max(limit - usage, 0)
    else
      _ -> @unlimited
    end
  end

  defp read_int(path) do
    case File.read(path) do
      {:ok, text} ->
        case Integer.parse(String.trim(text)) do
          {n, ""} -> {:ok, n}
          _ -> :error
        end

      _ ->
        :error
    end
  end
end
