defmodule Bridge.Codec do
  @moduledoc """
  Payload compression: the codecs of `protocol/registry.json` (`codecs`), done
  by the NIF with liblz4, libzstd and zlib (`shm/codecs.c`).

    * `:lz4_frame` — one LZ4 frame, independent blocks, with its content size and
      content checksum;
    * `:zstd` — one Zstandard frame, with its content size and checksum;
    * `:gzip` — one gzip member (RFC 1952), whose CRC32 and ISIZE zlib checks.

  `:none` (code 0) stores the payload as it is: `compress/3` returns the data
  as one binary, `decompress/4` checks its length.

  A compressed payload comes from a peer and is not trusted. `decompress/4`
  refuses a `decoded_length` above `max_decoded` (SPEC §6 check 15) before
  anything else, and the NIF checks what the data declares about itself (the
  LZ4 and zstd content size, the gzip ISIZE) and how far that many bytes could
  expand before it allocates: exactly `decoded_length` bytes, never written
  past. A payload that does not decompress to exactly that — a flipped bit, a
  cut, bytes after the end, a length that lies — is a `:bad_compressed_data`
  error. Errors are `%Bridge.Error{}` values; nothing here raises.

  Inputs and outputs above 64 KiB are compressed and decompressed on dirty CPU
  schedulers.

  ## Examples

      iex> data = String.duplicate("beambridge ", 1000)
      iex> {:ok, z} = Bridge.Codec.compress(:zstd, data)
      iex> byte_size(z) < byte_size(data)
      true
      iex> Bridge.Codec.decompress(:zstd, z, byte_size(data)) == {:ok, data}
      true
      iex> {:error, e} = Bridge.Codec.decompress(:zstd, z, 10)
      iex> {e.kind, e.reason, e.field, e.value, e.limit}
      {:bad_frame, :bad_compressed_data, :payload, 11000, 10}
      iex> {:ok, gz} = Bridge.Codec.compress(:gzip, ["abc", ?d])
      iex> :zlib.gunzip(gz)
      "abcd"
      iex> Bridge.Codec.compress(:none, ["ab", "c"])
      {:ok, "abc"}
  """

  import Bitwise

  alias Bridge.{Error, NIF}

  @typedoc "A codec the NIF compresses with (registry.json `codecs`, without `none`)."
  @type name :: :lz4_frame | :zstd | :gzip

  @names [:lz4_frame, :zstd, :gzip]
  @max_decoded 1 <<< 32

  @settings %{none: :none, lz4: :lz4_frame, zstd: :zstd, gzip: :gzip}

  @doc """
  The codec a fixed `:compress` setting names (`:lz4` is `:lz4_frame`).

  ## Examples

      iex> Bridge.Codec.of_setting(:lz4)
      :lz4_frame
  """
  @spec of_setting(:none | :lz4 | :zstd | :gzip) :: name() | :none
  def of_setting(setting), do: Map.fetch!(@settings, setting)

  @doc false
  # A slice's payload and frame options, compressed with `codec` when it is
  # one (nil: as it is). A payload that fails to compress (out of memory) is
  # written as it is: compression is never what makes a call fail.
  @spec frame_payload(name() | nil, iodata(), keyword()) :: {iodata(), keyword()}
  def frame_payload(nil, payload, frame_opts), do: {payload, frame_opts}

  def frame_payload(codec, payload, frame_opts) do
    case compress(codec, payload) do
      {:ok, packed} ->
        {packed, [codec: codec, decoded_length: IO.iodata_length(payload)] ++ frame_opts}

      {:error, _} ->
        {payload, frame_opts}
    end
  end

  @doc """
  Compresses `data` (iodata) as one frame of `name`. `level` 0 is the codec's
  fast default (LZ4's fast mode, zstd 1, gzip 1); otherwise `:lz4_frame` takes
  1..12, `:zstd` its own range (negative levels are faster), `:gzip` 1..9.

  ## Examples

      iex> {:ok, z} = Bridge.Codec.compress(:lz4_frame, :binary.copy("a", 100_000))
      iex> byte_size(z) < 1000
      true
      iex> {:error, e} = Bridge.Codec.compress(:gzip, "x", 10)
      iex> {e.kind, e.reason, e.field, e.value}
      {:nif, :badarg, :level, 10}
  """
  @spec compress(name() | :none, iodata(), integer()) :: {:ok, binary()} | {:error, Error.t()}
  def compress(name, data, level \\ 0) do
    with {:ok, bin} <- to_binary(data) do
      cond do
        name == :none -> {:ok, bin}
        name not in @names -> {:error, unknown(name)}
        not is_integer(level) -> {:error, Error.from_nif(:badarg, field: :level, value: level)}
        true -> nif_compress(name, bin, level)
      end
    end
  end

  defp nif_compress(name, bin, level) do
    case NIF.codec_compress(name, bin, level) do
      {:ok, _} = ok ->
        ok

      {:error, :badarg} ->
        {:error, Error.from_nif(:badarg, field: :level, value: level)}

      {:error, reason} ->
        {:error, Error.from_nif(reason, field: :data, value: byte_size(bin))}
    end
  end

  @doc """
  Decompresses `payload`, one whole frame of `name`, into exactly
  `decoded_length` bytes. A `decoded_length` above `max_decoded` (default 2^32,
  also the most the NIF makes) is refused before the payload is looked at.

  ## Examples

      iex> {:ok, z} = Bridge.Codec.compress(:lz4_frame, "hello")
      iex> Bridge.Codec.decompress(:lz4_frame, z, 5)
      {:ok, "hello"}
      iex> {:error, e} = Bridge.Codec.decompress(:lz4_frame, z <> "x", 5)
      iex> e.reason
      :bad_compressed_data
      iex> {:error, e} = Bridge.Codec.decompress(:zstd, z, 1_099_511_627_776)
      iex> {e.reason, e.field, e.limit}
      {:decoded_too_large, :decoded_length, 4294967296}
      iex> {:error, e} = Bridge.Codec.decompress(:none, "abc", 4)
      iex> e.message
      "bad frame: bad_decoded_length: field decoded_length is 4, expected 3"
  """
  @spec decompress(name() | :none, binary(), non_neg_integer(), non_neg_integer()) ::
          {:ok, binary()} | {:error, Error.t()}
  def decompress(name, payload, decoded_length, max_decoded \\ @max_decoded) do
    n = decoded_length

    cond do
      not is_binary(payload) ->
        {:error, Error.from_nif(:badarg, field: :payload, value: payload)}

      not is_integer(n) or n < 0 ->
        {:error, Error.from_nif(:badarg, field: :decoded_length, value: n)}

      name == :none and byte_size(payload) == n ->
        {:ok, payload}

      name == :none ->
        {:error,
         Error.new(:bad_frame, :bad_decoded_length,
           field: :decoded_length,
           value: n,
           limit: byte_size(payload)
         )}

      name not in @names ->
        {:error, unknown(name)}

      n > max_decoded ->
        {:error, too_large(n, max_decoded)}

      true ->
        nif_decompress(name, payload, n)
    end
  end

  defp nif_decompress(name, payload, n) do
    case NIF.codec_decompress(name, payload, n) do
      {:ok, _} = ok -> ok
      {:error, :too_large} -> {:error, too_large(n, @max_decoded)}
      {:error, :size_mismatch} -> {:error, corrupt(name, payload, n, declared(name, payload))}
      {:error, :bad_compressed_data} -> {:error, corrupt(name, payload, n, nil)}
      {:error, reason} -> {:error, Error.from_nif(reason, field: :decoded_length, value: n)}
    end
  end

  defp to_binary(data) when is_binary(data), do: {:ok, data}

  defp to_binary(data) when is_list(data) do
    {:ok, IO.iodata_to_binary(data)}
  rescue
    ArgumentError -> {:error, Error.from_nif(:badarg, field: :data, value: data)}
  end

  defp to_binary(data), do: {:error, Error.from_nif(:badarg, field: :data, value: data)}

  defp unknown(name), do: Error.new(:bad_frame, :unknown_codec, field: :codec, value: name)

  defp too_large(n, max) do
    Error.new(:bad_frame, :decoded_too_large, field: :decoded_length, value: n, limit: max)
  end

  # value: the length the payload declares, when it declares another one than
  # decoded_length (the limit); nil when it decodes to another length, or not at all.
  defp corrupt(name, payload, n, declared) do
    what =
      if declared,
        do: "declares #{declared} decoded bytes#{if name == :gzip, do: " (mod 2^32)"}",
        else: "is not one whole #{name} frame that decompresses to exactly #{n} bytes"

    Error.new(:bad_frame, :bad_compressed_data,
      field: :payload,
      value: declared,
      limit: n,
      message:
        "bad frame: bad_compressed_data: field payload (#{name}, #{byte_size(payload)} bytes) " <>
          "#{what}, expected decoded_length #{n} (the payload was corrupted or truncated " <>
          "in transit, or decoded_length is wrong; ask the sender to send it again)"
    )
  end

  # The decoded length a payload declares, read as the NIF reads it; nil if none.
  defp declared(:gzip, payload) when byte_size(payload) >= 4 do
    <<isize::little-32>> = binary_part(payload, byte_size(payload) - 4, 4)
    isize
  end

  # LZ4 frame: magic, FLG (bit 3: content size present), BD, then the size.
  defp declared(:lz4_frame, <<0x184D2204::little-32, flg, _bd, size::little-64, _::binary>>)
       when (flg &&& 0x08) != 0,
       do: size

  # zstd frame header: FHD, the window byte unless single-segment, the
  # dictionary id, then the content size in 0, 1, 2 (+256), 4 or 8 bytes.
  defp declared(:zstd, <<0xFD2FB528::little-32, fhd, rest::binary>>) do
    single = fhd >>> 5 &&& 1
    fcs = elem({single, 2, 4, 8}, fhd >>> 6)
    skip = 1 - single + elem({0, 1, 2, 4}, fhd &&& 3)

    case rest do
      <<_::binary-size(skip), size::little-size(fcs)-unit(8), _::binary>> when fcs > 0 ->
        if fcs == 2, do: size + 256, else: size

      _ ->
        nil
    end
  end

  defp declared(_name, _payload), do: nil
end
