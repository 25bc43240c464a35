defmodule Bridge.HeaderTest do
  use ExUnit.Case, async: true

  import Bitwise
  alias Bridge.{Error, Header}

  doctest Bridge.Header
  doctest Bridge.Error

  # A valid frame and a function that rewrites header fields (re-checksummed)
  # so each check of SPEC §6 can be hit on its own.
  defp frame(opts \\ []),
    do: Header.encode_frame!(:binary.copy("p", 100), [metadata: "meta"] ++ opts)

  defp with_fields(frame, fields) do
    h = Header.parse!(frame, byte_size(frame))
    <<_::binary-size(128), rest::binary>> = frame
    meta = binary_part(rest, 0, min(h.metadata_length, byte_size(rest)))
    Header.encode!(struct!(h, fields), meta) <> rest
  end

  defp reason(bin, opts \\ []) do
    case Header.parse(bin, byte_size(bin), opts) do
      {:ok, _} -> :ok
      {:error, %Error{kind: :bad_frame, reason: r, field: f}} -> {r, f}
    end
  end

  # The widths of SPEC §5.1, written out here apart from Bridge.Header's own table.
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
    payload_checksum: 64
  ]

  test "a header field past its width is a badarg naming it; at its largest it packs" do
    for {field, bits} <- @widths do
      largest = (1 <<< bits) - 1
      assert {:ok, _} = Header.encode(struct!(Header, [{field, largest}]), "")

      for bad <- [largest + 1, -1, 1.0] do
        assert {:error, %Error{reason: :badarg, field: ^field}} =
                 Header.encode(struct!(Header, [{field, bad}]), "")
      end
    end
  end

  test "each check of SPEC §6 in isolation" do
    f = frame()
    assert reason(f) == :ok
    assert reason(binary_part(f, 0, 127)) == {:truncated_header, :header}
    assert reason(with_fields(f, magic: "BBFX")) == {:bad_magic, :magic}
    assert reason(with_fields(f, version_major: 1)) == {:unsupported_version, :version_major}
    assert reason(with_fields(f, version_minor: 9)) == :ok
    assert reason(with_fields(f, header_size: 256)) == {:bad_header_size, :header_size}
    assert reason(with_fields(f, format: 200)) == {:unknown_format, :format}
    assert reason(with_fields(f, codec: 4)) == {:unknown_codec, :codec}
    assert reason(with_fields(f, flags: 2)) == {:unknown_flags, :flags}
    assert reason(with_fields(f, flags: 1 ||| 1 <<< 16)) == :ok

    assert reason(with_fields(f, metadata_length: 1_048_577)) ==
             {:metadata_too_large, :metadata_length}

    assert reason(with_fields(f, metadata_length: 1000)) ==
             {:metadata_out_of_bounds, :metadata_length}

    assert reason(with_fields(f, payload_offset: 150)) == {:misaligned_payload, :payload_offset}

    assert reason(with_fields(f, payload_offset: 128)) ==
             {:payload_overlaps_metadata, :payload_offset}

    assert reason(with_fields(f, payload_length: (1 <<< 64) - 64)) ==
             {:length_overflow, :payload_length}

    assert reason(with_fields(f, payload_length: 101, decoded_length: 101)) ==
             {:payload_out_of_bounds, :payload_length}

    assert reason(with_fields(f, decoded_length: 99)) == {:bad_decoded_length, :decoded_length}
    assert reason(with_fields(f, codec: 1, decoded_length: 1 <<< 32)) == :ok

    assert reason(with_fields(f, codec: 1, decoded_length: (1 <<< 32) + 1)) ==
             {:decoded_too_large, :decoded_length}

    assert reason(with_fields(f, codec: 2, decoded_length: 1000), max_decoded_length: 999) ==
             {:decoded_too_large, :decoded_length}

    <<head::binary-size(130), _, tail::binary>> = f
    assert reason(head <> "X" <> tail) == {:header_checksum_mismatch, :header_checksum}
  end

  test "the first failing check is the error" do
    f = frame()
    # bad magic and bad version: magic wins
    assert reason(with_fields(f, magic: "XXXX", version_major: 3)) == {:bad_magic, :magic}
    # misaligned and overlapping: check 10 before 11
    assert reason(with_fields(f, payload_offset: 129)) == {:misaligned_payload, :payload_offset}
    # overflow before out of bounds
    assert reason(with_fields(f, payload_offset: 192, payload_length: (1 <<< 64) - 1)) ==
             {:length_overflow, :payload_length}

    # header checks before the payload checksum
    bad_payload = binary_part(f, 0, byte_size(f) - 1) <> "Q"
    assert {:error, %Error{reason: :checksum_mismatch}} = Header.decode_frame(bad_payload)

    assert {:error, %Error{reason: :bad_decoded_length}} =
             Header.decode_frame(with_fields(bad_payload, decoded_length: 1))
  end

  test "only the copied metadata is hashed: metadata beyond the binary is out of bounds" do
    f = frame()
    header_only = binary_part(f, 0, 128)

    assert {:error, %Error{reason: :metadata_out_of_bounds}} =
             Header.parse(header_only, byte_size(f))

    assert {:ok, _} = Header.parse(binary_part(f, 0, 132), byte_size(f))
  end

  test "build refuses what a reader would refuse" do
    assert {:error, %Error{reason: :unknown_codec}} = Header.build("x", codec: 4)
    assert {:error, %Error{reason: :unknown_flags}} = Header.build("x", flags: 4)
    assert {:error, %Error{reason: :bad_decoded_length}} = Header.build("x", decoded_length: 5)

    assert {:ok, %Header{codec: 2, decoded_length: 5}} =
             Header.build("x", codec: :zstd, decoded_length: 5)

    assert {:error, %Error{reason: :misaligned_payload}} = Header.build("x", payload_offset: 130)

    assert {:error, %Error{reason: :metadata_too_large}} =
             Header.build("x", metadata: :binary.copy("m", 1_048_577))

    assert {:error, %Error{reason: :badarg, field: :schema_id}} = Header.build("x", schema_id: -1)
    assert {:error, %Error{reason: :badarg, field: :opts}} = Header.build("x", [:junk])
    assert {:ok, %Header{flags: 0, payload_checksum: 0}} = Header.build("x", checksum: false)
  end

  test "a frame with extra room before the payload decodes" do
    f = Header.encode_frame!("abc", metadata: "m", payload_offset: 640)
    assert byte_size(f) == 643
    assert Header.decode_frame!(f).payload == "abc"
  end

  test "errors name the field and the values" do
    {:error, e} = Header.parse(with_fields(frame(), version_major: 7), 356)
    assert Exception.message(e) =~ "version_major"
    assert Exception.message(e) =~ "7"

    assert_raise Error, ~r/unsupported_version/, fn ->
      Header.parse!(with_fields(frame(), version_major: 7), 356)
    end
  end
end
