defmodule Bridge.Header.Builder do
  @moduledoc false
  # The header a writer puts in front of a payload (protocol/SPEC.md §5.1):
  # Bridge.Header.build/2 and encode_frame/2, documented there. Options are
  # checked, the payload checksum computed, and a header a reader would refuse
  # (SPEC §6 checks 7, 10, 11, 14) is never produced. The format and codec
  # names are those of protocol/registry.json.

  import Bitwise

  import Bridge.Header,
    only: [badarg: 2, check_opts: 1, frame_error: 4, opt_bool: 3, opt_int: 4, xxh3: 1]

  alias Bridge.{Error, Header, Registry}

  @header_size Header.size()
  @max_metadata Header.max_metadata()
  @max_provenance 65_536
  @holds_meta Header.flag_holds_meta()
  @flag_payload_checksum Header.flag_payload_checksum()
  @known_required_flags @flag_payload_checksum
  @two64 1 <<< 64

  @formats Registry.formats()
  @codecs Registry.codecs()
  # {names, the codes, the largest}, by option
  @code_tables %{
    format: {@formats, Map.values(@formats), Enum.max(Map.values(@formats))},
    codec: {@codecs, Map.values(@codecs), Enum.max(Map.values(@codecs))}
  }

  @doc false
  @spec build(iodata(), keyword()) :: {:ok, Header.t()} | {:error, Error.t()}
  def build(payload, opts \\ [])

  def build(payload, opts) when (is_binary(payload) or is_list(payload)) and is_list(opts) do
    case payload_size(payload) do
      {:ok, size} -> build_sized(payload, size, opts)
      :error -> {:error, badarg(:payload, {payload, opts})}
    end
  end

  def build(payload, opts), do: {:error, badarg(:payload, {payload, opts})}

  defp payload_size(payload) when is_binary(payload), do: {:ok, byte_size(payload)}

  defp payload_size(payload) do
    {:ok, IO.iodata_length(payload)}
  rescue
    ArgumentError -> :error
  end

  defp build_sized(payload, size, opts) do
    with :ok <- check_opts(opts),
         {:ok, metadata} <- opt_metadata(opts),
         {:ok, format} <- opt_code(opts, :format, :unknown_format),
         {:ok, codec} <- opt_code(opts, :codec, :unknown_codec),
         {:ok, checksum?} <- opt_bool(opts, :checksum, true),
         {:ok, extra_flags} <- opt_int(opts, :flags, 0, 32),
         {:ok, generation} <- opt_int(opts, :generation, 0, 64),
         {:ok, schema_id} <- opt_int(opts, :schema_id, 0, 64),
         {:ok, schema_version} <- opt_int(opts, :schema_version, 0, 32),
         {:ok, decoded_length} <- opt_int(opts, :decoded_length, size, 64),
         {:ok, created_at} <- opt_int(opts, :created_at, 0, 64),
         {:ok, frame_id} <- opt_int(opts, :frame_id, 0, 64),
         {:ok, provenance} <- opt_provenance(opts),
         {:ok, provenance_checksum} <- block_checksum(provenance),
         default_offset = Header.payload_offset_for(byte_size(metadata) + byte_size(provenance)),
         {:ok, payload_offset} <- opt_int(opts, :payload_offset, default_offset, 64),
         {:ok, payload_checksum} <- payload_checksum(payload, checksum?) do
      flags = if checksum?, do: extra_flags ||| @flag_payload_checksum, else: extra_flags

      flags = if Bridge.Provenance.holds_meta?(provenance), do: flags ||| @holds_meta, else: flags

      header = %Header{
        format: format,
        codec: codec,
        flags: flags,
        generation: generation,
        schema_id: schema_id,
        schema_version: schema_version,
        metadata_length: byte_size(metadata),
        payload_offset: payload_offset,
        payload_length: size,
        decoded_length: decoded_length,
        payload_checksum: payload_checksum,
        created_at: created_at,
        frame_id: frame_id,
        provenance_length: byte_size(provenance),
        provenance_checksum: provenance_checksum
      }

      check_writable(header)
    end
  end

  # A writer refuses to produce what a reader would refuse (checks 7, 10, 11, 14).
  defp check_writable(%Header{} = h) do
    cond do
      (h.flags &&& 0xFFFF &&& bnot(@known_required_flags)) != 0 ->
        {:error, frame_error(:unknown_flags, :flags, h.flags, @known_required_flags)}

      rem(h.payload_offset, 64) != 0 ->
        {:error, frame_error(:misaligned_payload, :payload_offset, h.payload_offset, 64)}

      h.payload_offset < @header_size + h.metadata_length ->
        {:error,
         frame_error(
           :payload_overlaps_metadata,
           :payload_offset,
           h.payload_offset,
           @header_size + h.metadata_length
         )}

      h.payload_offset < @header_size + h.metadata_length + h.provenance_length ->
        {:error,
         frame_error(
           :provenance_out_of_bounds,
           :provenance_length,
           h.provenance_length,
           h.payload_offset - @header_size - h.metadata_length
         )}

      h.payload_offset + h.payload_length >= @two64 ->
        {:error, frame_error(:length_overflow, :payload_length, h.payload_length, @two64)}

      h.codec == 0 and h.decoded_length != h.payload_length ->
        {:error,
         frame_error(:bad_decoded_length, :decoded_length, h.decoded_length, h.payload_length)}

      true ->
        {:ok, h}
    end
  end

  defp payload_checksum(_payload, false), do: {:ok, 0}
  defp payload_checksum(payload, true) when is_binary(payload), do: xxh3(payload)
  defp payload_checksum(payload, true), do: xxh3(IO.iodata_to_binary(payload))

  defp block_checksum(""), do: {:ok, 0}
  defp block_checksum(block), do: xxh3(block)

  # SPEC §5.4: the block that follows the metadata, at most @max_provenance bytes.
  defp opt_provenance(opts) do
    case Keyword.get(opts, :provenance, "") do
      b when is_binary(b) and byte_size(b) <= @max_provenance ->
        {:ok, b}

      b when is_binary(b) ->
        {:error,
         frame_error(:provenance_out_of_bounds, :provenance_length, byte_size(b), @max_provenance)}

      other ->
        {:error, badarg(:provenance, other)}
    end
  end

  defp opt_metadata(opts) do
    case Keyword.get(opts, :metadata, "") do
      m when is_binary(m) and byte_size(m) <= @max_metadata ->
        {:ok, m}

      m when is_binary(m) ->
        {:error, frame_error(:metadata_too_large, :metadata_length, byte_size(m), @max_metadata)}

      other ->
        {:error, badarg(:metadata, other)}
    end
  end

  # A format or codec code (default 0), given as the code or its registry name.
  defp opt_code(opts, key, reason) do
    {names, codes, max} = Map.fetch!(@code_tables, key)

    case Keyword.get(opts, key, 0) do
      code when is_integer(code) and code >= 0 and code <= max ->
        if code in codes,
          do: {:ok, code},
          else: {:error, frame_error(reason, key, code, max)}

      code when is_integer(code) ->
        {:error, frame_error(reason, key, code, max)}

      name when is_map_key(names, name) ->
        {:ok, Map.fetch!(names, name)}

      other ->
        {:error, badarg(key, other)}
    end
  end

  @doc false
  @spec encode_frame(binary(), keyword()) :: {:ok, binary()} | {:error, Error.t()}
  def encode_frame(payload, opts \\ [])

  def encode_frame(payload, opts) when is_binary(payload) and is_list(opts) do
    with {:ok, h} <- build(payload, opts),
         metadata = Keyword.get(opts, :metadata, ""),
         block = Keyword.get(opts, :provenance, ""),
         {:ok, header} <- Header.encode(h, metadata) do
      padding = h.payload_offset - @header_size - h.metadata_length - h.provenance_length
      zeros = :binary.copy(<<0>>, padding)
      {:ok, IO.iodata_to_binary([header, metadata, block, zeros, payload])}
    end
  end

  def encode_frame(payload, opts), do: {:error, badarg(:payload, {payload, opts})}
end
