defmodule Bridge.InterpreterTest do
  # When a worker's frame names an object that no longer opens, the worker asks
  # whether its interpreter has died: then the call fails as :worker_died, not
  # as a broken frame. An interpreter still in the kernel's exit path has
  # already closed its files, so it counts as dead too.
  use ExUnit.Case, async: true

  import Bridge.Test.BridgeCase, only: [eventually: 2]

  alias Bridge.Test.Shm
  alias Bridge.Worker.Interpreter

  defp dead?(os_pid), do: Interpreter.dead?(%{os_pids: [os_pid]})

  test "a running process is alive; a reaped one is dead" do
    refute dead?(String.to_integer(System.pid()))
    assert dead?(Shm.dead_pid())
  end

  test "a zombie whose parent has not reaped it is dead" do
    # the child exits after its parent has become `sleep 30`, which never waits
    port =
      Port.open({:spawn, "sh -c 'sleep 0.2 & echo $! $$; exec sleep 30'"}, [:binary, {:line, 64}])

    assert_receive {^port, {:data, {:eol, pids}}}, 5_000
    [zombie, parent] = pids |> String.split() |> Enum.map(&String.to_integer/1)

    try do
      eventually(fn -> File.read!("/proc/#{zombie}/stat") =~ ") Z " end, 2_000)
      assert dead?(zombie)
      refute dead?(parent)
    after
      # the sleeping parent goes, and init reaps both
      System.cmd("kill", ["-9", "#{parent}"])
      eventually(fn -> not File.exists?("/proc/#{parent}") end, 2_000)
    end
  end

  test "a process in its exit path (PF_EXITING) is dead; other flags are not" do
    live = File.read!("/proc/self/stat")
    [head, tail] = String.split(live, ") ", parts: 2)
    [_state, ppid, pgrp, session, tty, tpgid, _flags | rest] = String.split(tail, " ")

    line = fn state, flags ->
      Enum.join([state, ppid, pgrp, session, tty, tpgid, flags | rest], " ")
    end

    refute Interpreter.exiting?(head <> ") " <> line.("R", "4194560"))
    assert Interpreter.exiting?(head <> ") " <> line.("R", "4194564"))
    assert Interpreter.exiting?(head <> ") " <> line.("D", "4"))
    assert Interpreter.exiting?(head <> ") " <> line.("Z", "4194560"))
    # a command name with ") " in it does not shift the fields
    refute Interpreter.exiting?("77 (a) b) c) " <> line.("S", "4194560"))
    assert Interpreter.exiting?("77 (a) b) c) " <> line.("S", "4194308"))
  end
end
