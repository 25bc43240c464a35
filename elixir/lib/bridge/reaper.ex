defmodule Bridge.Reaper do
  @moduledoc false
  # SPEC §1.5: unlink regions of one prefix whose owner process is dead.
  # Public entry point: Bridge.Region.reap_stale/1.

  require Logger

  alias Bridge.{ControlBlock, Error, NIF}

  @shm_dir "/dev/shm"

  @spec reap(String.t()) :: {:ok, [String.t()]} | {:error, Error.t()}
  def reap(prefix) do
    case File.ls(@shm_dir) do
      {:ok, entries} ->
        re = Regex.compile!("\\A" <> Regex.escape(prefix) <> "-([0-9]{1,10})-[0-9a-f]{16}\\z")
        own = String.to_integer(System.pid())
        {:ok, euid} = NIF.euid()

        removed =
          for entry <- Enum.sort(entries),
              [_, pid] <- [Regex.run(re, entry)],
              pid = String.to_integer(pid),
              ours?(entry, euid),
              stale?(entry, pid, own),
              unlink("/" <> entry),
              do: "/" <> entry

        {:ok, removed}

      {:error, reason} ->
        {:error, Error.from_nif(reason, field: :dir, value: @shm_dir)}
    end
  end

  # 0. only objects owned by our uid are ours to judge (as root, File.ls sees every
  # user's objects, and a dead pid in another user's name is not our business).
  defp ours?(entry, euid) do
    match?({:ok, %File.Stat{type: :regular, uid: ^euid}}, File.lstat(Path.join(@shm_dir, entry)))
  end

  # 1. our own pid: alive.
  defp stale?(_entry, own, own), do: false

  defp stale?(entry, pid, _own) do
    if File.exists?("/proc/#{pid}") do
      # 3. the pid exists: has it been reused by a process started later?
      reused?(entry, pid)
    else
      # 2. no such process: the owner is dead.
      true
    end
  end

  defp reused?(entry, pid) do
    path = Path.join(@shm_dir, entry)

    # Only regular files are opened (never block on a FIFO someone planted).
    with {:ok, %File.Stat{type: :regular, size: size}} <- File.lstat(path),
         {:ok, cb} <- pread_control_block(path),
         {:ok, %{owner_start_time: start}} when start != 0 <- ControlBlock.validate(cb, size) do
      case ControlBlock.start_time(pid) do
        # The process vanished between the two looks: dead.
        nil -> not File.exists?("/proc/#{pid}")
        ^start -> false
        _other -> true
      end
    else
      _ -> false
    end
  end

  defp pread_control_block(path) do
    case File.open(path, [:read, :binary, :raw]) do
      {:ok, fd} ->
        try do
          case :file.pread(fd, 0, ControlBlock.size()) do
            {:ok, data} -> {:ok, data}
            other -> {:error, other}
          end
        after
          File.close(fd)
        end

      error ->
        error
    end
  end

  defp unlink(name) do
    case NIF.unlink(name) do
      :ok ->
        true

      {:error, reason} ->
        Logger.warning("beambridge: could not unlink stale region #{name}: #{reason}")
        false
    end
  end
end
