defmodule Bridge.Test.Shm do
  @moduledoc false
  # Helpers for tests about names in /dev/shm.

  def rand_hex, do: Base.encode16(:crypto.strong_rand_bytes(8), case: :lower)

  # A pid no process has: the pid of a shell that has exited.
  def dead_pid do
    {out, 0} = System.cmd("sh", ["-c", "echo $$"])
    pid = out |> String.trim() |> String.to_integer()
    if File.exists?("/proc/#{pid}"), do: dead_pid(), else: pid
  end
end
