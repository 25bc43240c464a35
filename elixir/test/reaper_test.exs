defmodule Bridge.ReaperTest do
  # SPEC §1.5. Each test uses its own prefix so tests cannot reap each other's regions.
  use ExUnit.Case, async: true

  alias Bridge.{ControlBlock, Error, Region}
  alias Bridge.Test.Shm

  setup context do
    prefix = "bbtreap#{:erlang.phash2(context.test, 1_000_000)}"
    on_exit(fn -> Shm.cleanup(Enum.map(ls(prefix), &("/" <> &1))) end)
    %{prefix: prefix}
  end

  defp ls(prefix),
    do: "/dev/shm" |> File.ls!() |> Enum.filter(&String.starts_with?(&1, prefix <> "-"))

  # A live process that is not us: a `sleep` child.
  defp live_pid do
    port = Port.open({:spawn_executable, System.find_executable("sleep")}, args: ["30"])
    {:os_pid, pid} = Port.info(port, :os_pid)

    on_exit(fn ->
      System.cmd("kill", ["#{pid}"])
    end)

    pid
  end

  test "a region whose owner pid is dead is unlinked", %{prefix: prefix} do
    dead = Shm.dead_pid()
    name = Shm.forge(Shm.forged_name(prefix, dead), dead, 12_345)
    assert Shm.exists?(name)

    assert {:ok, [^name]} = Region.reap_stale(prefix: prefix)
    refute Shm.exists?(name)
    assert {:ok, []} = Region.reap_stale(prefix: prefix)
  end

  test "a region of a live owner is left alone; one whose pid was reused is unlinked",
       %{prefix: prefix} do
    pid = live_pid()
    start = ControlBlock.start_time(pid)
    assert is_integer(start)

    alive = Shm.forge(Shm.forged_name(prefix, pid), pid, start)
    unknown_start = Shm.forge(Shm.forged_name(prefix, pid), pid, 0)
    reused = Shm.forge(Shm.forged_name(prefix, pid), pid, start + 1)

    assert {:ok, [^reused]} = Region.reap_stale(prefix: prefix)
    assert Shm.exists?(alive)
    assert Shm.exists?(unknown_start)
    refute Shm.exists?(reused)
  end

  test "a live pid with an invalid control block is left alone", %{prefix: prefix} do
    pid = live_pid()
    name = Shm.forge(Shm.forged_name(prefix, pid), pid, 1)
    # region_size no longer matches the object's size: the block is invalid.
    File.write!("/dev/shm" <> name, "BBCB", [:append])

    assert {:ok, []} = Region.reap_stale(prefix: prefix)
    assert Shm.exists?(name)
  end

  test "our own regions, other prefixes and other names are never touched", %{prefix: prefix} do
    own = Region.create!(4096, prefix: prefix)
    on_exit(fn -> Region.close(own) end)
    dead = Shm.dead_pid()

    other_prefix = Shm.forge(Shm.forged_name(prefix <> "x", dead), dead, 0)
    on_exit(fn -> Shm.cleanup([other_prefix]) end)

    odd = "/#{prefix}-#{dead}-0123"
    File.write!("/dev/shm" <> odd, "")
    on_exit(fn -> File.rm("/dev/shm" <> odd) end)

    assert {:ok, []} = Region.reap_stale(prefix: prefix)
    assert Shm.exists?(own.name)
    assert Shm.exists?(other_prefix)
    assert Shm.exists?(odd)
  end

  @tag :root
  test "a dead owner's region that belongs to another uid is left alone", %{prefix: prefix} do
    {:ok, euid} = Bridge.NIF.euid()
    if euid != 0, do: flunk("needs root to give a region to another uid")
    dead = Shm.dead_pid()
    name = Shm.forge(Shm.forged_name(prefix, dead), dead, 12_345)
    path = "/dev/shm" <> name

    :ok = File.chown(path, 65_534)
    assert {:ok, []} = Region.reap_stale(prefix: prefix)
    assert Shm.exists?(name)

    :ok = File.chown(path, 0)
    assert {:ok, [^name]} = Region.reap_stale(prefix: prefix)
  end

  test "reap_stale validates the prefix" do
    assert {:error, %Error{reason: :bad_name, field: :prefix}} = Region.reap_stale(prefix: "../x")
    assert {:error, %Error{reason: :badarg}} = Region.reap_stale(:nope)
    assert_raise Error, fn -> Region.reap_stale!(prefix: "A") end
  end

  test "start time parsing copes with odd process names" do
    stat = "42 (a) b (c) ) R 1 " <> Enum.join(5..21, " ") <> " 777 rest"
    assert ControlBlock.parse_start_time(stat) == 777
    assert ControlBlock.parse_start_time("garbage") == nil
    assert ControlBlock.start_time(System.pid()) == ControlBlock.own_start_time()
  end
end
