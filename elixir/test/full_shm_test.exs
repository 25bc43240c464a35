defmodule Bridge.FullShmTest do
  # A full /dev/shm is a :no_space error at creation (invariant 4), never SIGBUS.
  # Runs a child VM in its own mount namespace with a 4 MiB tmpfs on /dev/shm.
  use ExUnit.Case, async: true

  {_, status} = System.cmd("unshare", ["-m", "true"], stderr_to_stdout: true)

  unless status == 0 do
    @tag skip: "unshare -m is not permitted here (needs root or CAP_SYS_ADMIN)"
  end

  test "creating a region larger than a full /dev/shm is :no_space, and nothing is left behind" do
    ebin = :code.lib_dir(:beambridge, :ebin) |> List.to_string()

    script = ~S"""
    big = Bridge.Region.create(8 * 1024 * 1024, prefix: "bbtfull")
    IO.puts("BIG=" <> inspect(big))
    {:ok, a} = Bridge.Region.create(3 * 1024 * 1024, prefix: "bbtfull")
    second = Bridge.Region.create(3 * 1024 * 1024, prefix: "bbtfull")
    IO.puts("SECOND=" <> inspect(second))
    IO.puts("LEFT=" <> inspect(File.ls!("/dev/shm")))
    :ok = Bridge.Region.close(a)
    IO.puts("AFTER_CLOSE=" <> inspect(File.ls!("/dev/shm")))
    IO.puts("RAW=" <> inspect(Bridge.NIF.create("/bbtfull-1-0000000000000000", 8 * 1024 * 1024)))
    IO.puts("DONE")
    """

    {out, status} =
      System.cmd(
        "unshare",
        [
          "-m",
          "sh",
          "-c",
          ~S(mount -t tmpfs -o size=4m tmpfs /dev/shm && exec "$0" "$@"),
          System.find_executable("elixir"),
          "-pa",
          ebin,
          "-e",
          script
        ],
        stderr_to_stdout: true
      )

    assert status == 0, out
    assert out =~ "DONE", out
    assert out =~ ~r/BIG=\{:error, %Bridge.Error\{\s*kind: :region,\s*reason: :no_space/, out
    assert out =~ ~r/SECOND=\{:error, %Bridge.Error\{\s*kind: :region,\s*reason: :no_space/, out
    [_, left] = Regex.run(~r/LEFT=(\[.*\])/, out)
    assert length(Code.eval_string(left) |> elem(0)) == 1
    assert out =~ "AFTER_CLOSE=[]"
    assert out =~ "RAW={:error, :enospc}"
  end
end
