defmodule Bridge.ApplicationTest do
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  alias Bridge.Test.Shm

  test "starting :beambridge reaps stale regions of the default prefix and logs them" do
    dead = Shm.dead_pid()
    name = Shm.forge(Shm.forged_name("bb", dead), dead, 0)
    on_exit(fn -> Shm.cleanup([name]) end)

    log =
      capture_log([level: :info], fn ->
        :ok = Application.stop(:beambridge)
        {:ok, _} = Application.ensure_all_started(:beambridge)
      end)

    refute Shm.exists?(name)
    assert log =~ name
  end

  test "stopping :beambridge unlinks regions that are still owned and open" do
    open = Bridge.Region.create!(4096, prefix: "bbtapp")
    closed = Bridge.Region.create!(4096, prefix: "bbtapp")
    :ok = Bridge.Region.close(closed)
    assert Shm.exists?(open.name)

    capture_log(fn ->
      :ok = Application.stop(:beambridge)
      {:ok, _} = Application.ensure_all_started(:beambridge)
    end)

    refute Shm.exists?(open.name)
    # The handle itself still works; only the name is gone.
    assert {:ok, _} = Bridge.Region.write_frame(open, "x")
    assert :ok = Bridge.Region.close(open)
  end
end
