defmodule Bridge.Header.Validator do
  @moduledoc false
  # The checks of protocol/SPEC.md §6 on a header a reader copied into private
  # memory: Bridge.Header.parse/3 (checks 1–16, in order; the first failure is
  # the error), verify_payload/2 and checksum_result/2 (check 17) and
  # decode_frame/2, documented there. The known format and codec codes are
  # those of protocol/registry.json.

  import Bitwise

  import Bridge.Header,
    only: [badarg: 2, check_opts: 1, frame_error: 4, opt_bool: 3, opt_int: 4, xxh3: 1]

  alias Bridge.{Error, Frame, Header, Registry}

  @header_size Header.size()
  @checksum_span 120
  @max_metadata Header.max_metadata()
  @default_max_decoded 1 <<< 32
  @flag_payload_checksum Header.flag_payload_checksum()
  @known_required_flags @flag_payload_checksum
  @two64 1 <<< 64

  @max_format Registry.formats() |> Map.values() |> Enum.max()
  @max_codec Registry.codecs() |> Map.values() |> Enum.max()

  @doc false
  @spec parse(binary(), non_neg_integer(), keyword()) :: {:ok, Header.t()} | {:error, Error.t()}
  def parse(binary, frame_size, opts \\ [])

  def parse(binary, frame_size, opts)
      when is_binary(binary) and is_integer(frame_size) and frame_size >= 0 and is_list(opts) do
    with :ok <- check_opts(opts),
         {:ok, max_decoded} <- opt_int(opts, :max_decoded_length, @default_max_decoded, 64) do
      do_parse(binary, frame_size, max_decoded)
    end
  end

  def parse(binary, frame_size, _opts) when not is_binary(binary),
    do: {:error, badarg(:binary, frame_size)}

  def parse(_binary, frame_size, opts) when is_list(opts),
    do: {:error, badarg(:frame_size, frame_size)}

  def parse(_binary, _frame_size, opts), do: {:error, badarg(:opts, opts)}

  # 1
  defp do_parse(_binary, frame_size, _max) when frame_size < @header_size,
    do: {:error, frame_error(:truncated_header, :header, frame_size, @header_size)}

  defp do_parse(binary, _frame_size, _max) when byte_size(binary) < @header_size,
    do: {:error, frame_error(:truncated_header, :header, byte_size(binary), @header_size)}

  defp do_parse(
         <<first::binary-size(@checksum_span), header_checksum::little-64, rest::binary>>,
         frame_size,
         max_decoded
       ) do
    h = Bridge.Header.Layout.unpack(first, header_checksum)

    case check(h, frame_size, max_decoded, byte_size(rest)) do
      :ok -> check_header_checksum(h, first, binary_part(rest, 0, h.metadata_length))
      {:error, _} = error -> error
    end
  end

  # 2–15, and that the caller passed the metadata the header announces.
  defp check(%Header{} = h, frame_size, max_decoded, metadata_available) do
    end_of_payload = h.payload_offset + h.payload_length
    end_of_metadata = @header_size + h.metadata_length

    cond do
      h.magic != "BBFH" ->
        {:error, frame_error(:bad_magic, :magic, h.magic, "BBFH")}

      h.version_major != 2 ->
        {:error, frame_error(:unsupported_version, :version_major, h.version_major, 2)}

      h.header_size != @header_size ->
        {:error, frame_error(:bad_header_size, :header_size, h.header_size, @header_size)}

      Header.format_name(h.format) == :unknown ->
        {:error, frame_error(:unknown_format, :format, h.format, @max_format)}

      Header.codec_name(h.codec) == :unknown ->
        {:error, frame_error(:unknown_codec, :codec, h.codec, @max_codec)}

      (h.flags &&& 0xFFFF &&& bnot(@known_required_flags)) != 0 ->
        {:error, frame_error(:unknown_flags, :flags, h.flags, @known_required_flags)}

      h.metadata_length > @max_metadata ->
        {:error,
         frame_error(:metadata_too_large, :metadata_length, h.metadata_length, @max_metadata)}

      end_of_metadata > frame_size ->
        {:error,
         frame_error(
           :metadata_out_of_bounds,
           :metadata_length,
           h.metadata_length,
           frame_size - @header_size
         )}

      rem(h.payload_offset, 64) != 0 ->
        {:error, frame_error(:misaligned_payload, :payload_offset, h.payload_offset, 64)}

      h.payload_offset < end_of_metadata ->
        {:error,
         frame_error(
           :payload_overlaps_metadata,
           :payload_offset,
           h.payload_offset,
           end_of_metadata
         )}

      end_of_payload >= @two64 ->
        {:error, frame_error(:length_overflow, :payload_length, h.payload_length, @two64)}

      end_of_payload > frame_size ->
        {:error,
         frame_error(
           :payload_out_of_bounds,
           :payload_length,
           h.payload_length,
           max(frame_size - h.payload_offset, 0)
         )}

      h.codec == 0 and h.decoded_length != h.payload_length ->
        {:error,
         frame_error(:bad_decoded_length, :decoded_length, h.decoded_length, h.payload_length)}

      h.codec != 0 and h.decoded_length > max_decoded ->
        {:error, frame_error(:decoded_too_large, :decoded_length, h.decoded_length, max_decoded)}

      metadata_available < h.metadata_length ->
        # The caller passed less metadata than the header announces.
        {:error,
         frame_error(
           :metadata_out_of_bounds,
           :metadata_length,
           h.metadata_length,
           metadata_available
         )}

      true ->
        :ok
    end
  end

  # 16
  defp check_header_checksum(h, first, metadata) do
    with {:ok, computed} <- xxh3(first <> metadata) do
      if computed == h.header_checksum do
        {:ok, h}
      else
        {:error,
         frame_error(:header_checksum_mismatch, :header_checksum, h.header_checksum, computed)}
      end
    end
  end

  @doc false
  @spec verify_payload(Header.t(), binary()) :: :ok | {:error, Error.t()}
  def verify_payload(%Header{} = h, payload) when is_binary(payload) do
    if (h.flags &&& @flag_payload_checksum) == 0 do
      :ok
    else
      with {:ok, computed} <- xxh3(payload), do: checksum_result(h, computed)
    end
  end

  @doc false
  # 17, given an already computed xxh3_64 of the payload.
  @spec checksum_result(Header.t(), non_neg_integer()) :: :ok | {:error, Error.t()}
  def checksum_result(%Header{} = h, computed) do
    if (h.flags &&& @flag_payload_checksum) == 0 or computed == h.payload_checksum do
      :ok
    else
      {:error, frame_error(:checksum_mismatch, :payload_checksum, h.payload_checksum, computed)}
    end
  end

  @doc false
  @spec decode_frame(binary(), keyword()) :: {:ok, Frame.t()} | {:error, Error.t()}
  def decode_frame(frame, opts \\ [])

  def decode_frame(frame, opts) when is_binary(frame) and is_list(opts) do
    with :ok <- check_opts(opts),
         {:ok, verify?} <- opt_bool(opts, :verify, true),
         {:ok, h} <- parse(frame, byte_size(frame), opts),
         payload = binary_part(frame, h.payload_offset, h.payload_length),
         :ok <- if(verify?, do: verify_payload(h, payload), else: :ok) do
      metadata = binary_part(frame, @header_size, h.metadata_length)
      {:ok, %Frame{header: h, metadata: metadata, payload: payload, provenance: block(frame, h)}}
    end
  end

  def decode_frame(frame, opts), do: {:error, badarg(:frame, {frame, opts})}

  # The provenance block's bytes (SPEC §5.4), unchecked; "" when they would run
  # past the payload offset (Bridge.Provenance.read/2 then says so).
  defp block(frame, %Header{provenance_length: n} = h) when n > 0 do
    start = @header_size + h.metadata_length
    if start + n <= h.payload_offset, do: binary_part(frame, start, n), else: ""
  end

  defp block(_frame, _h), do: ""
end
