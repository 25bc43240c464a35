# /dev/shm must look the same after the suite as before it (protocol/SPEC.md §1:
# shared objects have no name, so nothing is left there). Only names this run
# can have made are compared — names with this OS pid and the names of the test
# prefixes ("bbt…") — so names of a Python test run on the same host at the
# same time do not fail the run; any other change is printed as a note.
shm_before = MapSet.new(File.ls!("/dev/shm"))
# Bridge tests start Python workers (OS processes below this BEAM) and Ports
# (fds); both must be back where they started after the suite.
# The VM's resolver program (inet_gethost, below erl_child_setup) starts at the
# first native name lookup and stays: started now, its pipes are no leak.
_ = :inet_gethost_native.gethostbyname(~c"localhost")
procs_before = Enum.sort(Bridge.Test.BridgeCase.descendants())
fds_before = Bridge.Test.BridgeCase.open_fds()
own_pid = System.pid()

ours? = fn name ->
  String.contains?(name, "-#{own_pid}-") or String.starts_with?(name, ["bbt", "bbdoc"])
end

ExUnit.after_suite(fn _result ->
  # Let dropped arena, slice and peer resources reach their destructors first.
  Enum.each(Process.list(), &:erlang.garbage_collect/1)
  Process.sleep(50)

  # Workers of stopped bridges are gone by now; give stragglers a moment.
  wait_procs = fn wait_procs, tries ->
    procs = Enum.sort(Bridge.Test.BridgeCase.descendants())

    if procs == procs_before or tries == 0,
      do: procs,
      else: Process.sleep(50) && wait_procs.(wait_procs, tries - 1)
  end

  procs_after = wait_procs.(wait_procs, 40)
  fds_after = Bridge.Test.BridgeCase.open_fds()

  if procs_after != procs_before or fds_after > fds_before do
    IO.puts(
      :stderr,
      "\nprocesses or fds differ after the suite: processes #{inspect(procs_before)} -> " <>
        "#{inspect(procs_after)}, open fds #{fds_before} -> #{fds_after}"
    )

    System.halt(1)
  end

  shm_after = MapSet.new(File.ls!("/dev/shm"))
  added = MapSet.difference(shm_after, shm_before) |> Enum.sort()
  removed = MapSet.difference(shm_before, shm_after) |> Enum.sort()
  {our_added, other_added} = Enum.split_with(added, ours?)
  {our_removed, other_removed} = Enum.split_with(removed, ours?)

  if other_added != [] or other_removed != [] do
    IO.puts(
      "note: /dev/shm changed outside this test run: added #{inspect(other_added)}, " <>
        "removed #{inspect(other_removed)}"
    )
  end

  if our_added != [] or our_removed != [] do
    IO.puts(
      :stderr,
      "\n/dev/shm differs after the suite: left behind #{inspect(our_added)}, " <>
        "removed #{inspect(our_removed)}"
    )

    System.halt(1)
  end
end)

# Format decisions are logged at debug level (one line per argument); tests that
# check those lines raise the level themselves.
Logger.configure(level: :info)
ExUnit.start()
