defmodule Bridge.Header.Layout do
  @moduledoc false
  # The byte layout of the 128-byte frame header (protocol/SPEC.md §5.1): the
  # fields packed in order (pack_fields/1), their widths checked
  # (check_widths/1), and the inverse (unpack/2). Bridge.Header holds the entry
  # points.

  import Bitwise

  import Bridge.Header, only: [badarg: 3]

  alias Bridge.Header

  # {field, bit width} in header order, reserved bytes excluded.
  @widths [
    version_major: 16,
    version_minor: 16,
    header_size: 16,
    format: 8,
    codec: 8,
    flags: 32,
    generation: 64,
    schema_id: 64,
    schema_version: 32,
    metadata_length: 32,
    payload_offset: 64,
    payload_length: 64,
    decoded_length: 64,
    payload_checksum: 64,
    created_at: 64,
    frame_id: 64,
    provenance_length: 32,
    provenance_checksum: 64,
    header_checksum: 64
  ]

  @doc false
  @spec pack_fields(Header.t()) :: <<_::960>>
  def pack_fields(h) do
    <<h.magic::binary, h.version_major::little-16, h.version_minor::little-16,
      h.header_size::little-16, h.format::8, h.codec::8, h.flags::little-32,
      h.generation::little-64, h.schema_id::little-64, h.schema_version::little-32,
      h.metadata_length::little-32, h.payload_offset::little-64, h.payload_length::little-64,
      h.decoded_length::little-64, h.payload_checksum::little-64, h.created_at::little-64,
      h.frame_id::little-64, h.provenance_length::little-32, 0::32,
      h.provenance_checksum::little-64, 0::size(16)-unit(8)>>
  end

  # Every field in range: one guard, no walk over the fields (a frame is built
  # on every call); the walk below only names the field that is not.
  defguardp u(v, bits) when is_integer(v) and v >= 0 and v < 1 <<< bits

  # The one expression, `u(h.version_major, 16) and ... and u(h.payload_checksum, 64)`,
  # is made from @widths, so the fast check and the walk cannot disagree.
  header = Macro.var(:h, nil)

  in_range =
    @widths
    |> Enum.map(fn {field, bits} ->
      quote(do: u(unquote(header).unquote(field), unquote(bits)))
    end)
    |> Enum.reduce(fn check, acc -> quote(do: unquote(acc) and unquote(check)) end)

  @doc false
  @spec check_widths(Header.t()) :: :ok | {:error, Bridge.Error.t()}
  def check_widths(unquote(header)) do
    if unquote(in_range), do: :ok, else: first_bad_width(unquote(header))
  end

  defp first_bad_width(h) do
    Enum.reduce_while(@widths, :ok, fn {field, bits}, :ok ->
      case Map.fetch!(h, field) do
        v when is_integer(v) and v >= 0 and v < 1 <<< bits -> {:cont, :ok}
        v -> {:halt, {:error, badarg(field, v, (1 <<< bits) - 1)}}
      end
    end)
  end

  @doc false
  # The header of the 120 bytes before header_checksum, and that checksum
  # (the inverse of the layout encode/2 writes; no field is checked).
  @spec unpack(<<_::960>>, non_neg_integer()) :: Header.t()
  def unpack(first, header_checksum) do
    <<magic::binary-size(4), version_major::little-16, version_minor::little-16,
      header_size::little-16, format::8, codec::8, flags::little-32, generation::little-64,
      schema_id::little-64, schema_version::little-32, metadata_length::little-32,
      payload_offset::little-64, payload_length::little-64, decoded_length::little-64,
      payload_checksum::little-64, created_at::little-64, frame_id::little-64,
      provenance_length::little-32, _::32, provenance_checksum::little-64,
      _::binary-size(16)>> = first

    # bytes 72-119 were reserved in minor 0 (SPEC §5.1)
    {created_at, frame_id, provenance_length, provenance_checksum} =
      if version_minor == 0,
        do: {0, 0, 0, 0},
        else: {created_at, frame_id, provenance_length, provenance_checksum}

    %Header{
      magic: magic,
      version_major: version_major,
      version_minor: version_minor,
      header_size: header_size,
      format: format,
      codec: codec,
      flags: flags,
      generation: generation,
      schema_id: schema_id,
      schema_version: schema_version,
      metadata_length: metadata_length,
      payload_offset: payload_offset,
      payload_length: payload_length,
      decoded_length: decoded_length,
      payload_checksum: payload_checksum,
      created_at: created_at,
      frame_id: frame_id,
      provenance_length: provenance_length,
      provenance_checksum: provenance_checksum,
      header_checksum: header_checksum
    }
  end
end
