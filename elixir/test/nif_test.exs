defmodule Bridge.NIFTest do
  # The raw NIF: argument checks, bounds, slices and their holds, peer leases,
  # hashes, zstd.
  use ExUnit.Case, async: true

  import Bitwise
  alias Bridge.{Arena, NIF}

  @mib 1024 * 1024

  setup do
    {:ok, arena} = Arena.new(limit: 16 * @mib, min_arena: @mib)
    on_exit(fn -> Arena.close(arena) end)
    %{arena: arena, set: arena.ref}
  end

  # A raw slice handle, the arena grown as needed.
  defp alloc!(arena, frame_len) do
    {:ok, s} = Arena.alloc(arena, frame_len)
    s.ref
  end

  test "xxh3_64 matches the reference values, on both scheduler paths" do
    assert NIF.xxh3_64("") == {:ok, 0x2D06800538D394C2}
    big = :binary.copy(<<1, 2, 3, 4>>, 100_000)
    {:ok, h} = NIF.xxh3_64(big)
    assert {:ok, ^h} = NIF.xxh3_64(:binary.copy(big))
    assert NIF.xxh3_64(:not_a_binary) == {:error, :badarg}
  end

  test "slice_write_frame writes header, metadata, zeroed padding and payload, hashed in one pass",
       %{arena: arena} do
    for size <- [0, 1, 65_535, 65_536, 65_537, 300_001] do
      data = :crypto.strong_rand_bytes(size)
      slice = alloc!(arena, 192 + size)
      :ok = NIF.slice_write(slice, 128, :binary.copy(<<255>>, 64))
      {:ok, h} = Bridge.Header.build(data, metadata: "m", checksum: false)
      {:ok, header} = Bridge.Header.pack(%{h | flags: 1})
      assert {:ok, {hash, _}} = NIF.slice_write_frame(slice, header, "m", [data], true)
      assert {:ok, ^hash} = NIF.xxh3_64(data)
      assert {:ok, <<"m", 0::size(63)-unit(8)>>} = NIF.slice_read(slice, 128, 64)
      assert {:ok, ^data} = NIF.slice_read(slice, 192, size)
      :ok = NIF.slice_release(slice)
    end
  end

  test "slice_write_frame refuses a header that disagrees with what it writes", %{arena: arena} do
    slice = alloc!(arena, 1000)
    {:ok, h} = Bridge.Header.build("abc", checksum: false)
    {:ok, header} = Bridge.Header.pack(h)
    assert {:error, :bad_frame} = NIF.slice_write_frame(slice, header, "", ["abcd"], false)
    assert {:error, :bad_frame} = NIF.slice_write_frame(slice, header, "meta", ["abc"], false)
    assert {:error, :bad_frame} = NIF.slice_write_frame(slice, "short", "", ["abc"], false)
    {:ok, h} = Bridge.Header.build(:binary.copy("x", 2000), checksum: false)
    {:ok, header} = Bridge.Header.pack(h)

    assert {:error, :bad_frame} =
             NIF.slice_write_frame(slice, header, "", [:binary.copy("x", 2000)], false)

    assert {:error, :badarg} = NIF.slice_write_frame(slice, header, "", "not a list", false)
    assert {:error, :badarg} = NIF.slice_write_frame(slice, header, "", [1, 2], false)
  end

  test "slice reads and writes check bounds without overflow", %{arena: arena} do
    slice = alloc!(arena, 4096)
    {:ok, {_, _, len, _}} = NIF.slice_info(slice)
    assert :ok = NIF.slice_write(slice, len - 6, "123456")
    assert {:ok, "123456"} = NIF.slice_read(slice, len - 6, 6)
    assert {:ok, ""} = NIF.slice_read(slice, len, 0)
    assert {:error, :out_of_bounds} = NIF.slice_write(slice, len - 5, "123456")
    assert {:error, :out_of_bounds} = NIF.slice_read(slice, len + 1, 0)
    assert {:error, :out_of_bounds} = NIF.slice_read(slice, 1, (1 <<< 64) - 1)
    assert {:error, :out_of_bounds} = NIF.slice_read(slice, (1 <<< 64) - 1, 2)
    assert {:error, :out_of_bounds} = NIF.slice_read(slice, -1, 1)
    assert {:error, :out_of_bounds} = NIF.slice_read(slice, 1 <<< 70, 1)
    assert {:error, :badarg} = NIF.slice_read(slice, 1.0, 1)
    assert {:error, :badarg} = NIF.slice_read(make_ref(), 0, 1)
    assert {:error, :badarg} = NIF.slice_write(slice, 0, [1, 2])
    assert {:error, :out_of_bounds} = NIF.slice_binary(slice, len, 1)
  end

  test "a released slice refuses every operation; its handle stays safe to hold", %{arena: arena} do
    slice = alloc!(arena, 1000)
    :ok = NIF.slice_release(slice)
    :ok = NIF.slice_release(slice)
    assert {:error, :released} = NIF.slice_read(slice, 0, 1)
    assert {:error, :released} = NIF.slice_write(slice, 0, "x")
    assert {:error, :released} = NIF.slice_binary(slice, 0, 1)
    assert {:error, :released} = NIF.slice_lend(slice)
    assert {:error, :released} = NIF.slice_hold(slice)
    assert {:error, :released} = NIF.slice_unhold(slice)
    assert :ok = NIF.slice_return(slice)
    assert {:ok, {_, _, _, _}} = NIF.slice_info(slice)
  end

  test "a peer lease writes its generation at its ticket exactly once", %{arena: arena} do
    {:ok, s} = Arena.put(arena, "leased", [])
    {:ok, a} = Arena.announcement(arena, s.arena_id)
    {:ok, peer} = Bridge.Peer.open(a)
    {:ok, table} = NIF.lease_table_new(4)
    {:ok, lease} = NIF.peer_lease(peer, s.offset, s.length, table, {2, s.generation})
    assert :ok = NIF.peer_lease_release(lease)
    assert {:ok, g} = NIF.lease_table_word(table, 2)
    assert g == s.generation
    assert :ok = NIF.peer_lease_release(lease)
    assert {:error, :released} = NIF.peer_lease_read(lease, 0, 1)
    assert {:error, :released} = NIF.peer_lease_binary(lease, 0, 1)
    assert {:error, :out_of_bounds} = NIF.lease_table_word(table, 4)
    assert {:error, :out_of_bounds} = NIF.peer_lease(peer, s.offset, s.length, table, {4, 1})
    assert {:error, :badarg} = NIF.peer_lease(peer, s.offset, s.length, table, {-1, 1})
    assert {:error, :badarg} = NIF.peer_lease(peer, s.offset, s.length, :nope, {0, 1})
    assert {:error, :badarg} = NIF.lease_table_new(0)
    assert {:error, :badarg} = NIF.lease_table_new(1 <<< 21)
  end

  test "peer_open checks its arguments before it touches anything" do
    assert {:error, :badarg} = NIF.peer_open(1, 3, 0, 1, 4096, 0)
    assert {:error, :badarg} = NIF.peer_open(2, 3, 3, 1, 4096, 0)
    assert {:error, :badarg} = NIF.peer_open(2, 3, 0, 1, 4095, 0)
    assert {:error, :badarg} = NIF.peer_open(2, 3, 0, 1, 0, 0)
    assert {:error, :badarg} = NIF.peer_open(2, -3, 0, 1, 4096, 0)
    assert {:error, :badarg} = NIF.peer_open("2", 3, 0, 1, 4096, 0)
    assert {:error, {:peer_open_failed, _}} = NIF.peer_open(2, 1_000_000, 0, 1, 4096, 0)
  end

  test "unlink refuses names shm_unlink must not see" do
    assert {:error, :bad_name} = NIF.unlink("no-slash")
    assert {:error, :bad_name} = NIF.unlink("/a/b")
    assert {:error, :bad_name} = NIF.unlink("/")
    assert {:error, :bad_name} = NIF.unlink("/..")
    assert {:error, :bad_name} = NIF.unlink("/a\0b")
    assert {:error, :bad_name} = NIF.unlink("/" <> String.duplicate("a", 300))
    assert {:error, :badarg} = NIF.unlink(~c"/charlist")
    assert {:error, :enoent} = NIF.unlink("/bbt-#{System.pid()}-#{Bridge.Test.Shm.rand_hex()}")
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
