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

  describe "zstd_decompress" do
    # Golden frames made once with the Python zstandard package (level 3):
    #   zstandard.ZstdCompressor(level=3, **kw).compress(data)
    # @sized: b"hello zstd " * 10 (110 bytes), content size in the header.
    @sized "KLUv/SBulQAAWGhlbGxvIHpzdGQgAQDAafEC"
    # @unsized: the same data with write_content_size=False.
    @unsized "KLUv/QAAlQAAWGhlbGxvIHpzdGQgAQDAafEC"
    # @empty: b"".
    @empty "KLUv/SAAAQAA"
    # @big: b"abc" * 50_000 (150 000 bytes, the dirty-scheduler path), write_checksum=True.
    @big "KLUv/aTwSQIAXAAAGGFiYwEA+v/mbghFAAAIYwEA7MkOhJlF0Jo="
    # @checksummed: bytes(range(256)), write_checksum=True.
    @checksummed "KLUv/WQAAAEIAAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj9AQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eX2BhYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/gIGCg4SFhoeIiYqLjI2Oj5CRkpOUlZaXmJmam5ydnp+goaKjpKWmp6ipqqusra6vsLGys7S1tre4ubq7vL2+v8DBwsPExcbHyMnKy8zNzs/Q0dLT1NXW19jZ2tvc3d7f4OHi4+Tl5ufo6err7O3u7/Dx8vP09fb3+Pn6+/z9/v9LkM0G"

    @hello :binary.copy("hello zstd ", 10)

    test "golden frames decompress to exactly the expected bytes" do
      assert NIF.zstd_decompress(Base.decode64!(@sized), 110) == {:ok, @hello}
      assert NIF.zstd_decompress(Base.decode64!(@unsized), 110) == {:ok, @hello}
      assert NIF.zstd_decompress(Base.decode64!(@empty), 0) == {:ok, ""}

      assert NIF.zstd_decompress(Base.decode64!(@big), 150_000) ==
               {:ok, :binary.copy("abc", 50_000)}

      assert NIF.zstd_decompress(Base.decode64!(@checksummed), 256) ==
               {:ok, :binary.list_to_bin(Enum.to_list(0..255))}

      # Two frames back to back decode as their concatenation.
      two = Base.decode64!(@sized) <> Base.decode64!(@unsized)
      assert NIF.zstd_decompress(two, 220) == {:ok, @hello <> @hello}
      assert NIF.zstd_decompress(two, 219) == {:error, :bad_compressed_data}
    end

    test "a declared content size other than expected_size is refused before allocating" do
      sized = Base.decode64!(@sized)

      for n <- [0, 1, 109, 111, 1 <<< 20, 1 <<< 32] do
        assert NIF.zstd_decompress(sized, n) == {:error, :size_mismatch}, "expected #{n}"
      end

      assert NIF.zstd_decompress(Base.decode64!(@empty), 1) == {:error, :size_mismatch}
      assert NIF.zstd_decompress(Base.decode64!(@big), 149_999) == {:error, :size_mismatch}
    end

    test "a frame without a declared size that decodes to another length is bad data" do
      unsized = Base.decode64!(@unsized)

      for n <- [0, 1, 109, 111, 100_000] do
        assert NIF.zstd_decompress(unsized, n) == {:error, :bad_compressed_data}, "expected #{n}"
      end
    end

    test "truncated, corrupted and garbage frames are typed errors" do
      for frame <- [@sized, @unsized, @checksummed, @big], frame = Base.decode64!(frame) do
        size = byte_size(frame)

        for n <- 0..(size - 1) do
          assert {:error, reason} = NIF.zstd_decompress(binary_part(frame, 0, n), 110)
          assert reason in [:bad_compressed_data, :size_mismatch], "truncated to #{n}"
        end

        for i <- 0..(size - 1), flip <- [0x01, 0x80, 0xFF] do
          <<pre::binary-size(i), byte, post::binary>> = frame
          mutated = pre <> <<Bitwise.bxor(byte, flip)>> <> post

          case NIF.zstd_decompress(mutated, 256) do
            {:ok, out} -> assert byte_size(out) == 256
            {:error, reason} -> assert reason in [:bad_compressed_data, :size_mismatch]
          end
        end
      end

      # The checksum of @checksummed is its last 4 bytes: a wrong one is caught.
      frame = Base.decode64!(@checksummed)
      <<body::binary-size(byte_size(frame) - 4), sum::little-32>> = frame

      assert NIF.zstd_decompress(body <> <<sum + 1::little-32>>, 256) ==
               {:error, :bad_compressed_data}

      for garbage <- ["", "x", "not a zstd frame at all", :crypto.strong_rand_bytes(100_000)] do
        assert NIF.zstd_decompress(garbage, 10) == {:error, :bad_compressed_data}
      end
    end

    test "wrong types and out-of-range sizes are typed errors, never a raise" do
      sized = Base.decode64!(@sized)
      assert NIF.zstd_decompress(~c"abc", 3) == {:error, :badarg}
      assert NIF.zstd_decompress(:sized, 110) == {:error, :badarg}
      assert NIF.zstd_decompress(<<1::3>>, 0) == {:error, :badarg}
      assert NIF.zstd_decompress(sized, 110.0) == {:error, :badarg}
      assert NIF.zstd_decompress(sized, "110") == {:error, :badarg}
      assert NIF.zstd_decompress(sized, -1) == {:error, :badarg}
      assert NIF.zstd_decompress(sized, -(1 <<< 70)) == {:error, :badarg}
      assert NIF.zstd_decompress(sized, (1 <<< 32) + 1) == {:error, :too_large}
      assert NIF.zstd_decompress(sized, (1 <<< 64) - 1) == {:error, :too_large}
      assert NIF.zstd_decompress(sized, 1 <<< 200) == {:error, :too_large}
      # An unsized frame with a huge expected size: refused by the cap, nothing allocated.
      assert NIF.zstd_decompress(Base.decode64!(@unsized), 1 <<< 40) == {:error, :too_large}
    end
  end
end
