defmodule Bridge.NIFTest do
  # The raw NIF: argument checks, bounds, alignment, atomics, leases, hashes.
  use ExUnit.Case, async: true

  import Bitwise
  alias Bridge.{NIF, Region}

  setup do
    region = Region.create!(4096, prefix: "bbtnif")
    on_exit(fn -> Region.close(region) end)
    %{region: region, ref: region.ref}
  end

  test "xxh3_64 matches the reference values" do
    assert NIF.xxh3_64("") == {:ok, 0x2D06800538D394C2}
    # A large input goes through the dirty scheduler path and matches the region hash.
    big = :binary.copy(<<1, 2, 3, 4>>, 100_000)
    {:ok, h} = NIF.xxh3_64(big)
    {:ok, r} = NIF.create("/bbtnif-#{System.pid()}-#{Bridge.Test.Shm.rand_hex()}", 500_000)
    assert :ok = NIF.write(r, 100, big)
    assert NIF.xxh3_64_region(r, 100, byte_size(big)) == {:ok, h}
    assert NIF.read_copy(r, 100, byte_size(big)) == {:ok, big}
    assert :ok = NIF.region_unlink(r)
    assert NIF.xxh3_64(:not_a_binary) == {:error, :badarg}
  end

  test "write_hashed copies like write and returns xxh3_64 of what it wrote", %{ref: ref} do
    # sizes around the dirty-scheduler threshold and the 64 KiB hashing chunk
    {:ok, r} = NIF.create("/bbtnif-#{System.pid()}-#{Bridge.Test.Shm.rand_hex()}", 1_000_000)

    for size <- [0, 1, 65_535, 65_536, 65_537, 300_001] do
      data = :crypto.strong_rand_bytes(size)
      assert {:ok, hash} = NIF.write_hashed(r, 64, data)
      assert {:ok, ^hash} = NIF.xxh3_64(data)
      assert NIF.read_copy(r, 64, size) == {:ok, data}
    end

    assert :ok = NIF.region_unlink(r)
    assert {:error, :out_of_bounds} = NIF.write_hashed(ref, 4091, "123456")
    assert {:error, :badarg} = NIF.write_hashed(ref, 0, [1, 2])
  end

  test "read_copy and write check bounds without overflow", %{ref: ref} do
    assert :ok = NIF.write(ref, 4090, "123456")
    assert {:ok, "123456"} = NIF.read_copy(ref, 4090, 6)
    assert {:ok, ""} = NIF.read_copy(ref, 4096, 0)
    assert {:error, :out_of_bounds} = NIF.write(ref, 4091, "123456")
    assert {:error, :out_of_bounds} = NIF.read_copy(ref, 4097, 0)
    assert {:error, :out_of_bounds} = NIF.read_copy(ref, 1, (1 <<< 64) - 1)
    assert {:error, :out_of_bounds} = NIF.read_copy(ref, (1 <<< 64) - 1, 2)
    assert {:error, :out_of_bounds} = NIF.read_copy(ref, -1, 1)
    assert {:error, :out_of_bounds} = NIF.read_copy(ref, 1 <<< 70, 1)
    assert {:error, :badarg} = NIF.read_copy(ref, 1.0, 1)
    assert {:error, :badarg} = NIF.read_copy(make_ref(), 0, 1)
    assert {:error, :badarg} = NIF.write(ref, 0, [1, 2])
  end

  test "atomics check bounds and natural alignment", %{ref: ref} do
    assert :ok = NIF.store_u64(ref, 64, (1 <<< 64) - 1)
    assert {:ok, 18_446_744_073_709_551_615} = NIF.load_u64(ref, 64)
    assert {:ok, 18_446_744_073_709_551_615} = NIF.fetch_add_u64(ref, 64, 1)
    assert {:ok, 0} = NIF.load_u64(ref, 64)
    assert :ok = NIF.store_u32(ref, 4092, 7)
    assert {:ok, 7} = NIF.cas_u32(ref, 4092, 7, 9)
    assert {:ok, 9} = NIF.cas_u32(ref, 4092, 7, 11)
    assert {:ok, 9} = NIF.fetch_add_u32(ref, 4092, 1)
    assert {:ok, 10} = NIF.load_u32(ref, 4092)
    assert {:ok, 0} = NIF.cas_u64(ref, 128, 0, 5)
    assert {:error, :misaligned} = NIF.load_u32(ref, 2)
    assert {:error, :misaligned} = NIF.load_u64(ref, 4)
    assert {:error, :out_of_bounds} = NIF.load_u64(ref, 4096)
    assert {:error, :out_of_bounds} = NIF.load_u32(ref, 4094)
    assert {:error, :badarg} = NIF.store_u32(ref, 0, 1 <<< 32)
    assert {:error, :badarg} = NIF.store_u64(ref, 0, -1)
    assert {:error, :badarg} = NIF.cas_u32(ref, 0, :x, 1)
  end

  test "a closed region refuses operations but keeps its metadata", %{region: region} do
    ref = region.ref
    assert :ok = Region.close(region)
    assert {:ok, true} = NIF.closed?(ref)
    assert {:error, :closed} = NIF.read_copy(ref, 0, 1)
    assert {:error, :closed} = NIF.write(ref, 0, "x")
    assert {:error, :closed} = NIF.load_u32(ref, 0)
    assert {:error, :closed} = NIF.lease_acquire(ref, 36, 32, 2)
    assert {:ok, 4096} = NIF.size(ref)
    assert {:ok, name} = NIF.name(ref)
    assert name == region.name
  end

  test "a lease counts, refuses early release once a binary exists, and ends in its destructor",
       %{ref: ref} do
    assert :ok = NIF.store_u32(ref, 32, 2)
    assert {:error, :state_mismatch} = NIF.lease_acquire(ref, 36, 32, 1)
    assert {:ok, 0} = NIF.load_u32(ref, 36)

    {:ok, lease} = NIF.lease_acquire(ref, 36, 32, 2)
    assert {:ok, 1} = NIF.load_u32(ref, 36)
    assert :ok = NIF.lease_release(lease)
    assert {:ok, 0} = NIF.load_u32(ref, 36)
    assert {:error, :released} = NIF.lease_release(lease)
    assert {:error, :released} = NIF.lease_binary(lease, 0, 1)

    {:ok, lease} = NIF.lease_acquire(ref, 36, 32, 2)
    assert {:ok, bin} = NIF.lease_binary(lease, 100, 10)
    assert {:error, :in_use} = NIF.lease_release(lease)
    assert {:error, :out_of_bounds} = NIF.lease_binary(lease, 4090, 10)
    assert {:ok, 1} = NIF.load_u32(ref, 36)
    assert {:ok, addr} = NIF.address(ref)
    assert {:ok, addr + 100} == NIF.binary_address(bin)

    assert {:error, :misaligned} = NIF.lease_acquire(ref, 37, 32, 2)
    assert {:error, :out_of_bounds} = NIF.lease_acquire(ref, 36, 4096, 2)
    assert {:error, :badarg} = NIF.lease_binary(ref, 0, 1)
  end

  test "create refuses bad names and sizes without touching /dev/shm" do
    name = "/bbtnif-#{System.pid()}-#{Bridge.Test.Shm.rand_hex()}"
    assert {:error, :bad_name} = NIF.create("no-slash", 4096)
    assert {:error, :bad_name} = NIF.create("/a/b", 4096)
    assert {:error, :bad_name} = NIF.create("/", 4096)
    assert {:error, :bad_name} = NIF.create("/..", 4096)
    assert {:error, :bad_name} = NIF.create("/a\0b", 4096)
    assert {:error, :bad_name} = NIF.create("/" <> String.duplicate("a", 300), 4096)
    assert {:error, :badarg} = NIF.create(~c"/charlist", 4096)
    assert {:error, :region_too_small} = NIF.create(name, 191)
    assert {:error, :region_too_large} = NIF.create(name, (1 <<< 48) + 1)
    assert {:error, :out_of_bounds} = NIF.create(name, -1)
    assert {:error, :badarg} = NIF.create(name, "4096")
    refute Bridge.Test.Shm.exists?(name)

    {:ok, r} = NIF.create(name, 192)
    assert {:error, :eexist} = NIF.create(name, 192)
    assert :ok = NIF.region_unlink(r)
    assert :ok = NIF.region_unlink(r)
    assert {:error, :enoent} = NIF.unlink(name)
  end
end
