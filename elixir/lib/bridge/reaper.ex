defmodule Bridge.Reaper do
  @moduledoc false
  # Transport v2 names nothing: its shared objects are anonymous and the kernel
  # frees them with their last process. Earlier versions named POSIX shared-memory
  # objects `/<prefix>-<owner os pid>-<16 hex digits>` in /dev/shm, and an owner
  # killed with kill -9 left them there. At application start this removes every
  # such name, whatever its prefix, whose owner process is gone and whose object
  # belongs to this user (as root /dev/shm shows every user's objects, and a dead
  # pid in another user's name is not our business). A live owner's are left alone.

  require Logger

  alias Bridge.NIF

  @shm_dir "/dev/shm"
  @name ~r/\A[a-z0-9]{1,16}-([0-9]{1,10})-[0-9a-f]{16}\z/

  @spec reap() :: [String.t()]
  def reap do
    case File.ls(@shm_dir) do
      {:ok, entries} ->
        {:ok, euid} = NIF.euid()

        for entry <- Enum.sort(entries),
            [_, pid] <- [Regex.run(@name, entry)],
            ours?(entry, euid),
            dead?(String.to_integer(pid)),
            unlink("/" <> entry),
            do: "/" <> entry

      {:error, _} ->
        []
    end
  end

  defp ours?(entry, euid) do
    match?({:ok, %File.Stat{type: :regular, uid: ^euid}}, File.lstat(Path.join(@shm_dir, entry)))
  end

  defp dead?(pid), do: not File.exists?("/proc/#{pid}")

  defp unlink(name) do
    case NIF.unlink(name) do
      :ok ->
        true

      {:error, reason} ->
        Logger.warning("beambridge: could not remove stale shared memory #{name}: #{reason}")
        false
    end
  end
end
