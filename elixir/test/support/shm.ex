defmodule Bridge.Test.Shm do
  @moduledoc false
  # Helpers for tests that make shm objects by hand.

  alias Bridge.{ControlBlock, NIF}

  def rand_hex, do: Base.encode16(:crypto.strong_rand_bytes(8), case: :lower)

  def forged_name(prefix, pid), do: "/#{prefix}-#{pid}-#{rand_hex()}"

  # Creates a region through the NIF under `name` with a control block naming
  # `pid` and `start_time`, then closes the handle without unlinking, as a
  # crashed owner would leave it.
  def forge(name, pid, start_time, size \\ 4096) do
    {:ok, ref} = NIF.create(name, size)
    :ok = NIF.write(ref, 0, ControlBlock.encode(pid, start_time, size))
    :ok = NIF.close(ref)
    name
  end

  # A pid no process has: the pid of a shell that has exited.
  def dead_pid do
    {out, 0} = System.cmd("sh", ["-c", "echo $$"])
    pid = out |> String.trim() |> String.to_integer()
    if File.exists?("/proc/#{pid}"), do: dead_pid(), else: pid
  end

  def exists?(name), do: File.exists?("/dev/shm" <> name)

  def cleanup(names), do: Enum.each(names, &NIF.unlink/1)
end
