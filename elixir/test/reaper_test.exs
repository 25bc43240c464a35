defmodule Bridge.ReaperTest do
  # Names earlier versions left in /dev/shm: removed at start when their owner is
  # dead, whatever their prefix; a live owner's, another user's and other names stay.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  alias Bridge.Test.Shm

  defp forge(prefix, pid) do
    path = "/dev/shm/#{prefix}-#{pid}-#{Shm.rand_hex()}"
    File.write!(path, "left by an earlier version")
    on_exit(fn -> File.rm(path) end)
    path
  end

  test "dead owners' names go, with any prefix; live owners' and other files stay" do
    dead = Shm.dead_pid()
    stale = [forge("bb", dead), forge("myapp42", dead), forge("z", dead)]
    live = forge("bb", System.pid())
    other = "/dev/shm/bbt-not-a-region-#{Shm.rand_hex()}"
    File.write!(other, "x")
    on_exit(fn -> File.rm(other) end)

    removed = Bridge.Reaper.reap()
    assert Enum.sort(removed) == Enum.sort(Enum.map(stale, &String.trim_leading(&1, "/dev/shm")))
    for path <- stale, do: refute(File.exists?(path))
    assert File.exists?(live) and File.exists?(other)
    assert Bridge.Reaper.reap() == []
  end

  test "starting :beambridge reaps them and says so" do
    dead = Shm.dead_pid()
    path = forge("bbold", dead)

    log =
      capture_log([level: :info], fn ->
        :ok = Application.stop(:beambridge)
        {:ok, _} = Application.ensure_all_started(:beambridge)
      end)

    refute File.exists?(path)
    assert log =~ String.trim_leading(path, "/dev/shm")
  end
end
