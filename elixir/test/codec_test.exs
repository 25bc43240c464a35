defmodule Bridge.CodecTest do
  use ExUnit.Case, async: true

  import Bitwise

  alias Bridge.{Codec, Error, NIF}

  doctest Bridge.Codec
  doctest Bridge.Codec.Choice

  @codecs [:lz4_frame, :zstd, :gzip]
  @four_gib 1 <<< 32

  defp compressible(n) do
    line = "row,12345,beambridge,3.25,true\n"
    binary_part(:binary.copy(line, div(n, byte_size(line)) + 1), 0, n)
  end

  defp z!(codec, data, level \\ 0) do
    {:ok, z} = Codec.compress(codec, data, level)
    z
  end

  defp flip(bin, bit) do
    <<pre::bitstring-size(bit), b::1, post::bitstring>> = bin
    <<pre::bitstring, bxor(b, 1)::1, post::bitstring>>
  end

  test "the codec names are the registry's, with none" do
    assert Enum.sort(Keyword.keys(Enum.to_list(Bridge.Registry.codecs()))) ==
             Enum.sort([:none | @codecs])
  end

  test "round trips: empty, one byte, random and compressible, across the dirty threshold" do
    sizes = [0, 1, 100, 64 * 1024, 64 * 1024 + 1, 300_000, 3 * 1024 * 1024]

    for codec <- @codecs, n <- sizes, data <- [:crypto.strong_rand_bytes(n), compressible(n)] do
      z = z!(codec, data)
      assert Codec.decompress(codec, z, n) == {:ok, data}, "#{codec} #{n}"
    end

    for codec <- @codecs do
      data = compressible(2 * 1024 * 1024)
      assert byte_size(z!(codec, data)) < div(byte_size(data), 10)
      # iodata in, the same frame as for its binary
      assert {:ok, z} = Codec.compress(codec, ["ab", [?c | "d"]])
      assert Codec.decompress(codec, z, 4) == {:ok, "abcd"}
    end
  end

  test "levels: each codec's range, 0 the fast default, others refused as badarg" do
    data = compressible(200_000)

    for {codec, levels} <- [lz4_frame: [1, 3, 12], zstd: [-5, 3, 19], gzip: [1, 6, 9]],
        level <- [0 | levels] do
      assert Codec.decompress(codec, z!(codec, data, level), 200_000) == {:ok, data}
    end

    for {codec, level} <- [lz4_frame: 13, lz4_frame: -1, zstd: 23, gzip: 10, gzip: -1] do
      assert {:error, %Error{kind: :nif, reason: :badarg, field: :level, value: ^level}} =
               Codec.compress(codec, data, level)
    end

    assert {:error, %Error{reason: :badarg, field: :level}} = Codec.compress(:zstd, "x", 1.0)
  end

  test "none stores the payload as is and checks its length" do
    assert Codec.compress(:none, ["a", "bc"], 5) == {:ok, "abc"}
    assert Codec.decompress(:none, "abc", 3) == {:ok, "abc"}

    assert {:error, %Error{kind: :bad_frame, reason: :bad_decoded_length, value: 2, limit: 3}} =
             Codec.decompress(:none, "abc", 2)
  end

  test "gzip interoperates with :zlib" do
    for data <- ["", "x", compressible(100_000), :crypto.strong_rand_bytes(70_000)] do
      assert :zlib.gunzip(z!(:gzip, data)) == data
      assert Codec.decompress(:gzip, :zlib.gzip(data), byte_size(data)) == {:ok, data}
    end
  end

  test "every single bit flip is an error, or (where the codec does not look) the same bytes" do
    data = compressible(3000) <> :crypto.strong_rand_bytes(200)

    for codec <- @codecs do
      z = z!(codec, data)

      for _ <- 1..300 do
        flipped = flip(z, :rand.uniform(bit_size(z)) - 1)

        case Codec.decompress(codec, flipped, byte_size(data)) do
          {:ok, out} -> assert out == data
          {:error, e} -> assert %Error{kind: :bad_frame, reason: :bad_compressed_data} = e
        end
      end

      # the first and last bytes, bit by bit
      for bit <- Enum.to_list(0..63) ++ Enum.to_list((bit_size(z) - 64)..(bit_size(z) - 1)) do
        case Codec.decompress(codec, flip(z, bit), byte_size(data)) do
          {:ok, out} -> assert out == data
          {:error, e} -> assert e.reason == :bad_compressed_data, "#{codec} bit #{bit}"
        end
      end
    end
  end

  test "a payload cut at any length, or with bytes after it, is an error" do
    data = compressible(2000)

    for codec <- @codecs do
      z = z!(codec, data)

      for len <- 0..(byte_size(z) - 1) do
        assert {:error, %Error{reason: :bad_compressed_data, field: :payload}} =
                 Codec.decompress(codec, binary_part(z, 0, len), 2000)
      end

      for tail <- [<<0>>, "garbage", z] do
        assert {:error, %Error{reason: :bad_compressed_data}} =
                 Codec.decompress(codec, z <> tail, 2000)
      end
    end
  end

  test "frames that do not declare their size are still bounded by decoded_length" do
    data = compressible(5000)

    # lz4: the content size flag cleared and the 8 bytes removed; one of the 256
    # header checksums matches
    <<magic::binary-size(4), flg, bd, _size::binary-size(8), _hc, rest::binary>> =
      z!(:lz4_frame, data)

    lz4 =
      Enum.find_value(0..255, fn hc ->
        frame = <<magic::binary, bxor(flg, 0x08), bd, hc, rest::binary>>
        if NIF.codec_decompress(:lz4_frame, frame, 5000) == {:ok, data}, do: frame
      end)

    # zstd: no content size, a window descriptor of 8 KiB instead (not single segment)
    <<zmagic::binary-size(4), fhd, zrest::binary>> = z!(:zstd, data)
    assert fhd >>> 5 == 0b011
    <<_fcs::little-16, body::binary>> = zrest
    zstd = <<zmagic::binary, band(fhd, 0x07), 3 <<< 3, body::binary>>

    for {codec, frame} <- [lz4_frame: lz4, zstd: zstd] do
      assert is_binary(frame)
      assert Codec.decompress(codec, frame, 5000) == {:ok, data}

      for n <- [0, 1, 4999, 5001, 100_000] do
        assert NIF.codec_decompress(codec, frame, n) == {:error, :bad_compressed_data}

        assert {:error, %Error{reason: :bad_compressed_data, value: nil}} =
                 Codec.decompress(codec, frame, n)
      end
    end
  end

  test "data of another codec is an error" do
    data = compressible(5000)

    for codec <- @codecs, other <- @codecs, other != codec do
      assert {:error, %Error{reason: :bad_compressed_data}} =
               Codec.decompress(other, z!(codec, data), 5000)
    end

    assert {:error, %Error{reason: :bad_compressed_data}} = Codec.decompress(:zstd, data, 5000)
  end

  test "a decoded length that lies is a typed error" do
    data = compressible(1000)

    for codec <- @codecs do
      z = z!(codec, data)

      for n <- [999, 1001, 0, @four_gib] do
        assert {:error, %Error{kind: :bad_frame, reason: :bad_compressed_data, limit: ^n} = e} =
                 Codec.decompress(codec, z, n)

        assert e.message =~ "corrupted or truncated in transit"
      end

      assert {:error, %Error{reason: :decoded_too_large, value: 4_294_967_297, limit: @four_gib}} =
               Codec.decompress(codec, z, @four_gib + 1)

      assert {:error, %Error{reason: :decoded_too_large, limit: 500}} =
               Codec.decompress(codec, z, 1000, 500)

      for n <- [-1, 1000.0, :a] do
        assert {:error, %Error{reason: :badarg, field: :decoded_length}} =
                 Codec.decompress(codec, z, n)
      end

      # the NIF itself
      assert NIF.codec_decompress(codec, z, @four_gib + 1) == {:error, :too_large}
      assert NIF.codec_decompress(codec, z, 1 <<< 70) == {:error, :too_large}
      assert NIF.codec_decompress(codec, z, -1) == {:error, :badarg}
      assert NIF.codec_decompress(codec, z, 1000.0) == {:error, :badarg}
      assert NIF.codec_decompress(codec, z, 999) == {:error, :size_mismatch}
      assert NIF.codec_decompress(codec, [z], 1000) == {:error, :badarg}
    end

    # what the payload declares is in the error
    assert {:error, %Error{value: 1000, limit: 999}} =
             Codec.decompress(:lz4_frame, z!(:lz4_frame, data), 999)

    assert {:error, %Error{value: 1000, limit: 999}} =
             Codec.decompress(:gzip, z!(:gzip, data), 999)
  end

  test "unknown codecs and arguments that are not data are typed errors" do
    assert {:error, %Error{reason: :unknown_codec, value: :brotli}} = Codec.compress(:brotli, "x")
    assert {:error, %Error{reason: :unknown_codec}} = Codec.decompress(:unknown, "x", 1)
    assert {:error, %Error{reason: :badarg, field: :data}} = Codec.compress(:zstd, [1000])
    assert {:error, %Error{reason: :badarg, field: :data}} = Codec.compress(:zstd, :atom)
    assert {:error, %Error{reason: :badarg, field: :payload}} = Codec.decompress(:zstd, ["x"], 1)
    assert NIF.codec_compress(:brotli, "x", 0) == {:error, :badarg}
    assert NIF.codec_compress(:zstd, ["x"], 0) == {:error, :badarg}
    assert NIF.codec_decompress(:brotli, "x", 1) == {:error, :badarg}
  end

  test "random bytes never crash the decompressors" do
    for codec <- @codecs, _ <- 1..200 do
      junk = :crypto.strong_rand_bytes(:rand.uniform(200))
      assert {:error, %Error{}} = Codec.decompress(codec, junk, :rand.uniform(5000) - 1)
    end

    # headers that look right over random bodies
    for {codec, head} <- [
          lz4_frame: binary_part(z!(:lz4_frame, "x"), 0, 15),
          zstd: binary_part(z!(:zstd, "x"), 0, 6),
          gzip: binary_part(z!(:gzip, "x"), 0, 10)
        ],
        _ <- 1..200 do
      body = :crypto.strong_rand_bytes(:rand.uniform(300))
      assert {:error, %Error{}} = Codec.decompress(codec, head <> body, 1)
    end
  end

  describe "a hostile frame declaring 4 GiB in 100 bytes" do
    test "zstd: refused from its header, nothing allocated" do
      # FHD 0xE0: single segment, an 8-byte content size; then one last raw block
      # of 84 bytes: one whole frame of 100 bytes
      block = 84 <<< 3 ||| 1
      frame = <<0xFD2FB528::little-32, 0xE0, @four_gib::little-64, block::little-24>>
      frame = frame <> :binary.copy("a", 84)
      assert byte_size(frame) == 100

      {us, result} = :timer.tc(fn -> Codec.decompress(:zstd, frame, 100) end)
      assert {:error, %Error{reason: :bad_compressed_data, value: @four_gib, limit: 100}} = result
      assert us < 1_000_000
      assert NIF.codec_decompress(:zstd, frame, 100) == {:error, :size_mismatch}
      # a length that agrees with the header, but not with 100 bytes of input
      assert NIF.codec_decompress(:zstd, frame, @four_gib) == {:error, :bad_compressed_data}
    end

    test "lz4: the content size checked before the output is allocated" do
      # a real frame with its content size rewritten; one of the 256 header
      # checksums matches the new descriptor
      <<magic::binary-size(4), flg, bd, _size::binary-size(8), _hc, rest::binary>> =
        z!(:lz4_frame, compressible(100))

      results =
        for hc <- 0..255 do
          frame = <<magic::binary, flg, bd, @four_gib::little-64, hc, rest::binary>>

          assert {:error, %Error{reason: :bad_compressed_data}} =
                   Codec.decompress(:lz4_frame, frame, 100)

          assert NIF.codec_decompress(:lz4_frame, frame, @four_gib) ==
                   {:error, :bad_compressed_data}

          NIF.codec_decompress(:lz4_frame, frame, 100)
        end

      assert {:error, :size_mismatch} in results
    end

    test "gzip: the ISIZE checked before the output is allocated" do
      z = z!(:gzip, compressible(100))
      lying = binary_part(z, 0, byte_size(z) - 4) <> <<0xFFFFFFFF::little-32>>
      assert NIF.codec_decompress(:gzip, lying, 100) == {:error, :size_mismatch}

      assert {:error, %Error{reason: :bad_compressed_data, value: 0xFFFFFFFF}} =
               Codec.decompress(:gzip, lying, 100)

      # ISIZE 0 agrees with 2^32 mod 2^32, but 20 bytes cannot inflate to 4 GiB
      assert NIF.codec_decompress(:gzip, z!(:gzip, ""), @four_gib) ==
               {:error, :bad_compressed_data}
    end
  end
end
