defmodule Bridge.VectorsTest do
  # Every protocol/vectors/*.json becomes a test by name (SPEC §14).
  use ExUnit.Case, async: true

  alias Bridge.{Arena, Header, NIF, Peer}
  alias Bridge.Test.JSON

  @vector_dir Path.expand("../../protocol/vectors", __DIR__)
  @vectors @vector_dir |> Path.join("*.json") |> Path.wildcard() |> Enum.sort()

  for path <- @vectors do
    @external_resource path
    @external_resource String.replace_suffix(path, ".json", ".bin")
  end

  @header_fields ~w(version_major version_minor header_size format codec flags generation
                    schema_id schema_version metadata_length payload_offset payload_length
                    decoded_length payload_checksum created_at frame_id provenance_length
                    provenance_checksum header_checksum)

  test "the vector set exists and covers every validation reason of SPEC §6" do
    assert length(@vectors) >= 2

    reasons =
      for path <- @vectors,
          v = JSON.decode!(File.read!(path)),
          v["valid"] == false,
          into: MapSet.new(),
          do: v["error"]["reason"]

    for reason <- ~w(truncated_header bad_magic unsupported_version bad_header_size
                     unknown_format unknown_codec unknown_flags metadata_too_large
                     metadata_out_of_bounds misaligned_payload payload_overlaps_metadata
                     length_overflow payload_out_of_bounds bad_decoded_length
                     decoded_too_large bad_compressed_data header_checksum_mismatch checksum_mismatch
                     provenance_out_of_bounds provenance_checksum_mismatch bad_provenance) do
      assert reason in reasons, "no bad_ vector for #{reason}"
    end
  end

  for path <- @vectors do
    name = Path.basename(path, ".json")

    test "vector #{name}" do
      v = JSON.decode!(File.read!(unquote(path)))
      bin = File.read!(String.replace_suffix(unquote(path), ".json", ".bin"))

      assert v["name"] == unquote(name)
      assert byte_size(bin) == v["frame_size"]
      assert String.starts_with?(unquote(name), if(v["valid"], do: "good_", else: "bad_"))

      cond do
        v["stage"] == "provenance" -> check_provenance(v, bin)
        v["stage"] == "decompress" -> check_decompress(v, bin)
        v["valid"] -> check_good(v, bin) && check_provenance(v, bin)
        true -> check_bad(v, bin)
      end
    end
  end

  # SPEC §5.4: the block reads as the vector says, or fails at its check; the
  # header validates either way.
  defp check_provenance(v, bin) do
    assert {:ok, frame} = Header.decode_frame(bin)

    case {v["stage"], Bridge.Provenance.read(frame.header, bin)} do
      {"provenance", result} ->
        reason = String.to_atom(v["error"]["reason"])
        field = String.to_atom(v["error"]["field"])
        assert {:error, %Bridge.Error{reason: ^reason, field: ^field}} = described(result)

      {nil, {:ok, p}} ->
        expected = v["provenance"] || %{}
        {:ok, described} = described({:ok, p})
        assert Map.take(described, Map.keys(expected)) == expected
    end

    true
  end

  # The description as the JSON of the vector has it (string keys).
  defp described({:ok, p}) do
    with {:ok, d} <- Bridge.Provenance.describe(p),
         do: {:ok, Map.new(d, fn {k, v} -> {Atom.to_string(k), v} end)}
  end

  defp described(error), do: error

  defp check_good(v, bin) do
    assert {:ok, frame} = Header.decode_frame(bin)

    for field <- @header_fields do
      assert Map.fetch!(frame.header, String.to_atom(field)) == Map.fetch!(v["header"], field),
             "header field #{field}"
    end

    assert frame.header.magic == "BBFH"
    assert frame.metadata == Base.decode16!(v["metadata_hex"], case: :mixed)
    assert {:ok, v["payload_xxh3"]} == NIF.xxh3_64(frame.payload)

    if hex = v["payload_hex"] do
      assert frame.payload == Base.decode16!(hex, case: :mixed)
    end

    if decoded = v["decoded_xxh3"] do
      codec = Header.codec_name(frame.header.codec)
      {:ok, bin} = Bridge.Codec.decompress(codec, frame.payload, frame.header.decoded_length)
      assert {:ok, decoded} == NIF.xxh3_64(bin)
    end

    # Header validation alone, and our encoder reproduces the header bytes
    # (all of them when the reserved bytes are 0, as this version writes them;
    # a newer minor may use them, and readers ignore them).
    assert {:ok, header} = Header.parse(bin, byte_size(bin))
    encoded = Header.encode!(header, frame.metadata)

    case {header.version_minor, binary_part(bin, 92, 4), binary_part(bin, 104, 16)} do
      {0, _, _} -> assert binary_part(encoded, 0, 72) == binary_part(bin, 0, 72)
      {_, <<0::32>>, <<0::128>>} -> assert encoded == binary_part(bin, 0, 128)
      _reserved_in_use -> assert binary_part(encoded, 0, 92) == binary_part(bin, 0, 92)
    end

    # The same frame read out of a slice of shared memory, through a read-only
    # peer mapping and a lease.
    assert {:ok, region_frame} = read_through_slice(bin, v["header"]["generation"])
    assert region_frame.header == frame.header
    assert region_frame.metadata == frame.metadata
    assert region_frame.payload == frame.payload
  end

  # A good header over a compressed payload that does not decompress.
  defp check_decompress(v, bin) do
    reason = String.to_atom(v["error"]["reason"])
    field = String.to_atom(v["error"]["field"])
    assert {:ok, %{header: h, payload: payload}} = Header.decode_frame(bin)

    assert {:error, %Bridge.Error{kind: :bad_frame, reason: ^reason, field: ^field}} =
             Bridge.Codec.decompress(Header.codec_name(h.codec), payload, h.decoded_length)
  end

  defp check_bad(v, bin) do
    reason = String.to_atom(v["error"]["reason"])
    field = String.to_atom(v["error"]["field"])

    assert {:error, %Bridge.Error{kind: :bad_frame, reason: ^reason, field: ^field} = e} =
             Header.decode_frame(bin)

    assert is_binary(Exception.message(e))

    if byte_size(bin) >= 128 do
      <<_::binary-size(16), generation::little-64, _::binary>> = bin

      assert {:error, %Bridge.Error{kind: :bad_frame, reason: ^reason, field: ^field}} =
               read_through_slice(bin, generation)
    end
  end

  # The frame written raw into a slice, then read back as a worker's slice would
  # be: the slice's length is the vector's, so bounds checks see the same frame size.
  defp read_through_slice(frame, generation) do
    {:ok, arena} = Arena.new(limit: 64 * 1024 * 1024, min_arena: 4 * 1024 * 1024)

    try do
      {:ok, s} = Arena.alloc(arena, byte_size(frame))
      :ok = NIF.slice_write(s.ref, 0, frame)
      {:ok, announcement} = Arena.announcement(arena, s.arena_id)
      {:ok, peer} = Peer.open(announcement)
      {:ok, lease} = Peer.lease(peer, s.offset, byte_size(frame), nil, nil)

      case Peer.read_frame(lease, byte_size(frame), generation, verify: true) do
        {:ok, f} -> {:ok, %{f | payload: :binary.copy(f.payload)}}
        error -> error
      end
    after
      Arena.close(arena)
    end
  end
end
