defmodule Bridge.CompressTest do
  # compress: through a local pool's shared memory (protocol/SPEC.md §15.3): a
  # codec asked for by name compresses the argument slices (the worker
  # decompresses them) and the result slices (the worker compresses, this side
  # decompresses); :auto and :none store payloads as they are.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  @pool BbtCompress

  setup_all do
    start_supervised!({Bridge, bridge_opts(@pool, pool_size: 1)})
    :ok
  end

  setup do
    Bridge.reset_format_stats()
    :ok
  end

  defp call(fun, args, opts),
    do: Bridge.call({:bbt_handlers, fun}, args, [pool: @pool, timeout: 30_000] ++ opts)

  # bytes of binaries that went to Python in slices, as written
  defp slice_bytes(direction, form) do
    Enum.sum(for %{direction: ^direction, form: ^form, bytes: b} <- Bridge.format_stats(), do: b)
  end

  defp sha(bin), do: :crypto.hash(:sha256, bin) |> Base.encode16(case: :lower)

  test "each codec carries arguments and results, and the slices hold fewer bytes" do
    data = :binary.copy("the same forty bytes, again and again.. ", 50_000)
    [worker] = Bridge.workers(@pool)

    for setting <- [:lz4, :zstd, :gzip] do
      Bridge.reset_format_stats()
      # the handler got the very bytes (it hashes what it received)
      assert {:ok, digest} = call(:digest, [data], compress: setting)
      assert digest == sha(data)
      assert slice_bytes(:to_python, :raw_slice) < div(byte_size(data), 10)

      # a result the worker compressed comes back whole
      assert {:ok, ^data} = call(:identity, [data], compress: setting)

      assert {:ok, made} = call(:make_bytes, [3_000_000, 7], compress: setting)
      assert made == :binary.copy(<<7>>, 3_000_000)
    end

    # nothing replaced the worker
    assert [%{os_pid: pid}] = Bridge.workers(@pool)
    assert pid == worker.os_pid
  end

  test "a corrupted compressed argument is a typed error and the worker is kept" do
    data = :binary.copy("corrupt me in shared memory ", 100_000)
    [%{os_pid: pid}] = Bridge.workers(@pool)

    for {setting, damage} <- [lz4: :flip, zstd: :flip, gzip: :flip, lz4: :length, gzip: :length] do
      {:ok, prepared} =
        Bridge.Call.prepare({:bbt_handlers, :digest}, [data], pool: @pool, compress: setting)

      [slice] = prepared.slices
      {:ok, head} = Bridge.Arena.read(slice, 0, 128)
      h = Bridge.Header.parse!(head, slice.length, verify: false)
      assert h.codec != 0 and h.decoded_length == byte_size(data)

      case damage do
        # a bit in the middle of the compressed payload
        :flip ->
          at = h.payload_offset + div(h.payload_length, 2)
          {:ok, <<byte>>} = Bridge.Arena.read(slice, at, 1)
          :ok = Bridge.NIF.slice_write(slice.ref, at, <<Bitwise.bxor(byte, 0x04)>>)

        # a header that says one byte more (its checksum made again: a lying writer)
        :length ->
          header = Bridge.Header.encode!(%{h | decoded_length: h.decoded_length + 1}, "")
          :ok = Bridge.NIF.slice_write(slice.ref, 0, header)
      end

      try do
        assert {:error, %Bridge.Error{reason: :bad_compressed_data} = e} =
                 Bridge.Stream.Session.call(prepared)

        assert e.message =~ "bad_compressed_data"
      after
        Enum.each(prepared.slices, &Bridge.Arena.release/1)
      end
    end

    assert {:ok, digest} = call(:digest, [data], compress: :lz4)
    assert digest == sha(data)
    assert [%{os_pid: ^pid}] = Bridge.workers(@pool)
  end

  test "a result decompresses to at most :arena_limit in all; the worker stays" do
    start_supervised!(
      {Bridge, bridge_opts(BbtCompressSmall, pool_size: 1, arena_limit: 64 * 1_048_576)},
      id: :small
    )

    [%{os_pid: pid}] = Bridge.workers(BbtCompressSmall)

    assert {:error, %Bridge.Error{kind: :bad_frame, reason: :decoded_too_large}} =
             Bridge.call({:bbt_handlers, :make_bytes}, [100_000_000, 1],
               pool: BbtCompressSmall,
               compress: :zstd,
               timeout: 30_000
             )

    # as it is, the same result comes (in chunks), and so does a smaller one compressed
    assert {:ok, big} =
             Bridge.call({:bbt_handlers, :make_bytes}, [100_000_000, 1],
               pool: BbtCompressSmall,
               timeout: 30_000
             )

    assert byte_size(big) == 100_000_000

    assert {:ok, small} =
             Bridge.call({:bbt_handlers, :make_bytes}, [30_000_000, 1],
               pool: BbtCompressSmall,
               compress: :zstd
             )

    assert small == :binary.copy(<<1>>, 30_000_000)
    assert [%{os_pid: ^pid}] = Bridge.workers(BbtCompressSmall)
  end

  test "a compressed argument too large for the arenas goes as it is, in chunks" do
    start_supervised!(
      {Bridge, bridge_opts(BbtCompressChunks, pool_size: 1, arena_limit: 4 * 1_048_576)},
      id: :chunks
    )

    # random bytes do not shrink: the compressed slice cannot fit either
    data = :crypto.strong_rand_bytes(80 * 1_048_576)
    expected = :crypto.hash(:sha256, data) |> Base.encode16(case: :lower)

    assert {:ok, ^expected} =
             Bridge.call({:bbt_handlers, :digest}, [data],
               pool: BbtCompressChunks,
               compress: :lz4,
               timeout: 60_000
             )
  end

  test "an untrusted pool's sealed results come compressed too" do
    start_supervised!({Bridge, bridge_opts(BbtCompressSealed, pool_size: 1, untrusted: true)},
      id: :sealed
    )

    for setting <- [:lz4, :zstd, :gzip] do
      Bridge.reset_format_stats()

      assert {:ok, made} =
               Bridge.call({:bbt_handlers, :make_bytes}, [2_000_000, 9],
                 pool: BbtCompressSealed,
                 compress: setting
               )

      assert made == :binary.copy(<<9>>, 2_000_000)

      assert Enum.sum(for %{direction: :from_python, bytes: b} <- Bridge.format_stats(), do: b) <
               200_000
    end
  end

  test "a stream's elements are compressed one by one" do
    Bridge.reset_format_stats()

    elements =
      Bridge.stream({:bbt_streams, :blobs}, [4, 300_000], pool: @pool, compress: :zstd)
      |> Enum.map(&byte_size/1)

    assert elements == [300_000, 300_000, 300_000, 300_000]
    # each came in a slice of its own, compressed
    assert slice_bytes(:from_python, :raw_slice) in 1..div(4 * 300_000, 10)
  end

  test "a worker older than protocol 2.7 gets its arguments uncompressed" do
    data = :binary.copy("older worker ", 100_000)
    ref = Bridge.Config.get(@pool).peer_minor
    minor = :atomics.get(ref, 1)
    assert minor >= 7

    try do
      :atomics.put(ref, 1, 6)
      assert {:ok, digest} = call(:digest, [data], compress: :zstd)
      assert digest == sha(data)
      assert slice_bytes(:to_python, :raw_slice) == byte_size(data)
    after
      :atomics.put(ref, 1, minor)
    end
  end

  test ":auto and :none store payloads as they are through shared memory" do
    data = :binary.copy("z", 2_000_000)

    for setting <- [:auto, :none] do
      Bridge.reset_format_stats()
      assert {:ok, ^data} = call(:identity, [data], compress: setting)
      assert slice_bytes(:to_python, :raw_slice) == byte_size(data)
    end
  end

  test "tensors, Buffers and tables cross compressed" do
    floats = for i <- 1..200_000, into: <<>>, do: <<rem(i, 100) * 0.5::float-32-little>>
    tensor = Bridge.Tensor.new!(floats, {:f, 32}, {200_000})
    assert {:ok, sum} = call(:tensor_sum, [tensor], compress: :zstd)
    assert_in_delta sum, Enum.sum(for i <- 1..200_000, do: rem(i, 100) * 0.5), 1.0e-6

    assert {:ok, %Bridge.Tensor{} = doubled} = call(:echo_tensor_double, [tensor], compress: :lz4)

    assert doubled.data ==
             for(<<x::float-32-little <- floats>>, into: <<>>, do: <<x * 2::float-32-little>>)

    buffer = Bridge.Buffer.new(:binary.copy("buffer", 100_000))
    assert {:ok, digest} = call(:digest, [buffer], compress: :gzip)
    assert digest == sha(buffer.data)
  end

  test "a bad :compress value is a typed error, and the pool takes its default from :compress" do
    assert {:error, %Bridge.Error{kind: :bad_call, field: :compress}} =
             call(:identity, [1], compress: :snappy)

    assert {:error, %Bridge.Error{kind: :bad_call, reason: :bad_option, field: :compress}} =
             Bridge.start_link(bridge_opts(BbtCompressBad, compress: :snappy))

    start_supervised!({Bridge, bridge_opts(BbtCompressZstd, pool_size: 1, compress: :zstd)},
      id: :zstd_pool
    )

    data = :binary.copy("pool default ", 100_000)
    Bridge.reset_format_stats()
    assert {:ok, ^data} = Bridge.call({:bbt_handlers, :identity}, [data], pool: BbtCompressZstd)
    assert slice_bytes(:to_python, :raw_slice) < div(byte_size(data), 10)

    # a call's own setting wins
    Bridge.reset_format_stats()

    assert {:ok, ^data} =
             Bridge.call({:bbt_handlers, :identity}, [data],
               pool: BbtCompressZstd,
               compress: :none
             )

    assert slice_bytes(:to_python, :raw_slice) == byte_size(data)
  end
end
