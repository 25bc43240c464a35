defmodule Bridge.Header do
  @moduledoc """
  The 128-byte frame header (protocol/SPEC.md §5.1) and its validation (§6).

  All integers are little-endian. `format` and `codec` are kept as the integer
  codes of the spec; `format_name/1` and `codec_name/1` give their names, from
  the tables of `protocol/registry.json` (`Bridge.Registry`).

  Validation works on a binary the caller has copied into private memory
  (`Bridge.Peer.read_frame/4` copies a slice's header and metadata out of the
  shared mapping before calling `parse/3`), so a peer rewriting shared memory
  cannot change a value between its check and its use.

  This module holds the layout (`encode/2`, `pack/1`) and the entry points;
  `Bridge.Header.Builder` builds the header a writer puts in front of a payload
  (`build/2`, `encode_frame/2`) and `Bridge.Header.Validator` runs the checks
  of §6 (`parse/3`, `verify_payload/2`, `decode_frame/2`).
  """

  import Bitwise

  alias Bridge.{Error, Frame, NIF, Registry}
  alias Bridge.Header.{Builder, Layout, Validator}

  @header_size 128
  @max_metadata 1_048_576
  @flag_payload_checksum 1

  # name => code, from protocol/registry.json
  @formats Registry.formats()
  @codecs Registry.codecs()

  defstruct magic: "BBFH",
            version_major: 2,
            version_minor: 1,
            header_size: @header_size,
            format: 0,
            codec: 0,
            flags: @flag_payload_checksum,
            generation: 0,
            schema_id: 0,
            schema_version: 0,
            metadata_length: 0,
            payload_offset: @header_size,
            payload_length: 0,
            decoded_length: 0,
            payload_checksum: 0,
            created_at: 0,
            frame_id: 0,
            provenance_length: 0,
            provenance_checksum: 0,
            header_checksum: 0

  @type t :: %__MODULE__{
          magic: <<_::32>>,
          version_major: non_neg_integer(),
          version_minor: non_neg_integer(),
          header_size: non_neg_integer(),
          format: non_neg_integer(),
          codec: non_neg_integer(),
          flags: non_neg_integer(),
          generation: non_neg_integer(),
          schema_id: non_neg_integer(),
          schema_version: non_neg_integer(),
          metadata_length: non_neg_integer(),
          payload_offset: non_neg_integer(),
          payload_length: non_neg_integer(),
          decoded_length: non_neg_integer(),
          payload_checksum: non_neg_integer(),
          created_at: non_neg_integer(),
          frame_id: non_neg_integer(),
          provenance_length: non_neg_integer(),
          provenance_checksum: non_neg_integer(),
          header_checksum: non_neg_integer()
        }

  @typedoc "A format as its spec code or name."
  @type format ::
          non_neg_integer()
          | unquote(Registry.union_type(@formats |> Enum.sort_by(&elem(&1, 1)) |> Keyword.keys()))
  @typedoc "A codec as its spec code or name."
  @type codec ::
          non_neg_integer()
          | unquote(Registry.union_type(@codecs |> Enum.sort_by(&elem(&1, 1)) |> Keyword.keys()))

  @doc """
  The header size in bytes, 128.

  ## Examples

      iex> Bridge.Header.size()
      128
  """
  @spec size() :: 128
  def size, do: @header_size

  @doc """
  The largest metadata a frame may carry, 1048576 bytes.

  ## Examples

      iex> Bridge.Header.max_metadata()
      1048576
  """
  @spec max_metadata() :: pos_integer()
  def max_metadata, do: @max_metadata

  @doc """
  Where a writer puts the payload: the smallest multiple of 64 that is at least
  `128 + metadata_length` (SPEC §5.1).

  ## Examples

      iex> Bridge.Header.payload_offset_for(0)
      128
      iex> Bridge.Header.payload_offset_for(40)
      192
      iex> Bridge.Header.payload_offset_for(64)
      192
  """
  @spec payload_offset_for(non_neg_integer()) :: non_neg_integer()
  def payload_offset_for(metadata_length)
      when is_integer(metadata_length) and metadata_length >= 0 do
    @header_size + metadata_length + 63 &&& bnot(63)
  end

  @doc """
  The `PAYLOAD_CHECKSUM` flag bit (SPEC §5.2).

      iex> Bridge.Header.flag_payload_checksum()
      1
  """
  @spec flag_payload_checksum() :: 1
  def flag_payload_checksum, do: @flag_payload_checksum

  @doc """
  The optional `HOLDS_META` flag bit (SPEC §5.2, §5.4): the frame's provenance
  block holds its call's stored meta.

      iex> Bridge.Header.flag_holds_meta()
      65536
  """
  @spec flag_holds_meta() :: 65_536
  def flag_holds_meta, do: 0x10000

  @doc """
  The name of a format code, or `:unknown`.

  ## Examples

      iex> Bridge.Header.format_name(1)
      :tensor
      iex> Bridge.Header.format_name(9)
      :unknown
  """
  @spec format_name(non_neg_integer()) :: atom()
  for {name, code} <- @formats, do: def(format_name(unquote(code)), do: unquote(name))
  def format_name(_code), do: :unknown

  @doc """
  The name of a codec code, or `:unknown`.

  ## Examples

      iex> Bridge.Header.codec_name(2)
      :zstd
  """
  @spec codec_name(non_neg_integer()) :: atom()
  for {name, code} <- @codecs, do: def(codec_name(unquote(code)), do: unquote(name))
  def codec_name(_code), do: :unknown

  @doc """
  Builds the header a writer puts in front of `payload`.

  Options:

    * `:format` — code or name (default `:raw`)
    * `:codec` — code or name (default `:none`)
    * `:metadata` — metadata bytes (default `""`)
    * `:provenance` — the provenance block that follows the metadata (SPEC §5.4,
      `Bridge.Provenance`; default `""`), and `:created_at`, `:frame_id` (default `0`)
    * `:checksum` — compute the payload checksum and set `PAYLOAD_CHECKSUM` (default `true`)
    * `:flags` — extra flag bits (default `0`)
    * `:generation`, `:schema_id`, `:schema_version` — default `0`
    * `:decoded_length` — default `byte_size(payload)`; required to differ only with a codec
    * `:payload_offset` — default `payload_offset_for(byte_size(metadata))`

  The header checksum is filled in by `encode/2`. The payload may be iodata (a
  list of binaries): only its size is needed, and its bytes when `:checksum`
  is true.

  ## Examples

      iex> {:ok, h} = Bridge.Header.build("abc", format: :tensor, metadata: "m")
      iex> {h.format, h.flags, h.metadata_length, h.payload_offset, h.payload_length}
      {1, 1, 1, 192, 3}
      iex> {:error, e} = Bridge.Header.build("abc", format: 7)
      iex> {e.reason, e.field}
      {:unknown_format, :format}
  """
  @spec build(iodata(), keyword()) :: {:ok, t()} | {:error, Error.t()}
  defdelegate build(payload, opts \\ []), to: Builder

  @doc """
  Encodes `header` and computes its checksum over `header[0:120] ++ metadata`.

  Field values are written as they are (so tests can build invalid headers);
  only their widths are checked. `header_checksum` in the struct is ignored.

  ## Examples

      iex> {:ok, bin} = Bridge.Header.encode(%Bridge.Header{}, "")
      iex> {byte_size(bin), binary_part(bin, 0, 4)}
      {128, "BBFH"}
      iex> {:error, e} = Bridge.Header.encode(%Bridge.Header{format: 256}, "")
      iex> {e.reason, e.field}
      {:badarg, :format}
  """
  @spec encode(t(), binary()) :: {:ok, <<_::1024>>} | {:error, Error.t()}
  def encode(%__MODULE__{magic: <<_::binary-size(4)>>} = h, metadata) when is_binary(metadata) do
    with :ok <- Layout.check_widths(h),
         first = Layout.pack_fields(h),
         {:ok, checksum} <- xxh3(first <> metadata) do
      {:ok, <<first::binary, checksum::little-64>>}
    end
  end

  def encode(%__MODULE__{magic: magic}, metadata) when is_binary(metadata),
    do: {:error, badarg(:magic, magic)}

  def encode(header, metadata), do: {:error, badarg(:header, {header, metadata})}

  @doc false
  # The 128 header bytes with header_checksum 0, for a writer that computes the
  # checksum itself while it writes (Bridge.Arena, through the NIF). Widths are
  # checked as in encode/2.
  @spec pack(t()) :: {:ok, <<_::1024>>} | {:error, Error.t()}
  def pack(%__MODULE__{magic: <<_::binary-size(4)>>} = h) do
    with :ok <- Layout.check_widths(h), do: {:ok, <<Layout.pack_fields(h)::binary, 0::little-64>>}
  end

  @doc """
  Like `encode/2` but returns the binary or raises `Bridge.Error`.

  ## Examples

      iex> byte_size(Bridge.Header.encode!(%Bridge.Header{}, "meta"))
      128
  """
  @spec encode!(t(), binary()) :: <<_::1024>>
  def encode!(header, metadata), do: bang(encode(header, metadata))

  @doc """
  Validates a header (SPEC §6, checks 1–16, in that order; the first failure
  is the error).

  `binary` holds the header followed by at least `metadata_length` bytes of
  metadata (a whole frame will do); `frame_size` is the size of the frame area
  the offsets are checked against. Pass a private copy, never a view of shared
  memory.

  Options: `:max_decoded_length` (default 2^32).

  ## Examples

      iex> {:ok, frame} = Bridge.Header.encode_frame("hello", metadata: "m")
      iex> {:ok, h} = Bridge.Header.parse(frame, byte_size(frame))
      iex> {h.payload_offset, h.payload_length, h.metadata_length}
      {192, 5, 1}
      iex> {:error, e} = Bridge.Header.parse("BBFH", 4)
      iex> {e.reason, e.field}
      {:truncated_header, :header}
      iex> {:error, e} = Bridge.Header.parse(frame, 196)
      iex> {e.reason, e.field, e.value, e.limit}
      {:payload_out_of_bounds, :payload_length, 5, 4}
  """
  @spec parse(binary(), non_neg_integer(), keyword()) :: {:ok, t()} | {:error, Error.t()}
  defdelegate parse(binary, frame_size, opts \\ []), to: Validator

  @doc """
  Like `parse/3` but returns the header or raises `Bridge.Error`.

  ## Examples

      iex> frame = Bridge.Header.encode_frame!("x")
      iex> Bridge.Header.parse!(frame, byte_size(frame)).payload_length
      1
  """
  @spec parse!(binary(), non_neg_integer(), keyword()) :: t()
  def parse!(binary, frame_size, opts \\ []), do: bang(parse(binary, frame_size, opts))

  @doc """
  Checks the payload checksum (SPEC §6 check 17) when `PAYLOAD_CHECKSUM` is set.

  ## Examples

      iex> frame = Bridge.Header.encode_frame!("x")
      iex> h = Bridge.Header.parse!(frame, byte_size(frame))
      iex> Bridge.Header.verify_payload(h, "x")
      :ok
      iex> {:error, e} = Bridge.Header.verify_payload(h, "y")
      iex> {e.reason, e.field}
      {:checksum_mismatch, :payload_checksum}
  """
  @spec verify_payload(t(), binary()) :: :ok | {:error, Error.t()}
  defdelegate verify_payload(header, payload), to: Validator

  @doc false
  # Check 17 given an already computed xxh3_64 of the payload.
  @spec checksum_result(t(), non_neg_integer()) :: :ok | {:error, Error.t()}
  defdelegate checksum_result(header, computed), to: Validator

  @doc """
  Encodes a whole frame: header, metadata, zero padding, payload. Takes the
  options of `build/2`.

  ## Examples

      iex> {:ok, frame} = Bridge.Header.encode_frame("payload", metadata: "meta")
      iex> byte_size(frame)
      199
      iex> binary_part(frame, 192, 7)
      "payload"
  """
  @spec encode_frame(binary(), keyword()) :: {:ok, binary()} | {:error, Error.t()}
  defdelegate encode_frame(payload, opts \\ []), to: Builder

  @doc """
  Like `encode_frame/2` but returns the binary or raises `Bridge.Error`.

  ## Examples

      iex> byte_size(Bridge.Header.encode_frame!(""))
      128
  """
  @spec encode_frame!(binary(), keyword()) :: binary()
  def encode_frame!(payload, opts \\ []), do: bang(encode_frame(payload, opts))

  @doc """
  Decodes a whole frame binary: header validation (checks 1–16) then, unless
  `verify: false`, the payload checksum (check 17).

  `metadata` and `payload` are sub-binaries of `frame`.

  Options: `:verify` (default `true`), `:max_decoded_length` (default 2^32).

  ## Examples

      iex> frame = Bridge.Header.encode_frame!("data", metadata: "m", format: :etf)
      iex> {:ok, f} = Bridge.Header.decode_frame(frame)
      iex> {f.header.format, f.metadata, f.payload}
      {3, "m", "data"}
      iex> corrupt = binary_part(frame, 0, byte_size(frame) - 1) <> "X"
      iex> {:error, e} = Bridge.Header.decode_frame(corrupt)
      iex> e.reason
      :checksum_mismatch
      iex> {:ok, _} = Bridge.Header.decode_frame(corrupt, verify: false)
  """
  @spec decode_frame(binary(), keyword()) :: {:ok, Frame.t()} | {:error, Error.t()}
  defdelegate decode_frame(frame, opts \\ []), to: Validator

  @doc """
  Like `decode_frame/2` but returns the frame or raises `Bridge.Error`.

  ## Examples

      iex> Bridge.Header.decode_frame!(Bridge.Header.encode_frame!("abc")).payload
      "abc"
  """
  @spec decode_frame!(binary(), keyword()) :: Frame.t()
  def decode_frame!(frame, opts \\ []), do: bang(decode_frame(frame, opts))

  ## Shared by the builder and the validator

  @doc false
  @spec xxh3(binary()) :: {:ok, non_neg_integer()} | {:error, Error.t()}
  def xxh3(binary) do
    case NIF.xxh3_64(binary) do
      {:ok, h} -> {:ok, h}
      {:error, reason} -> {:error, Error.from_nif(reason)}
    end
  end

  @doc false
  # A frame the header checks refuse: `reason` names the check, `field` the
  # header field, `limit` what the check allows.
  @spec frame_error(atom(), atom(), term(), term()) :: Error.t()
  def frame_error(reason, field, value, limit),
    do: Error.new(:bad_frame, reason, field: field, value: value, limit: limit)

  @doc false
  # An argument of the wrong type or range.
  @spec badarg(atom(), term(), term()) :: Error.t()
  def badarg(field, value, limit \\ nil),
    do: Error.new(:bad_frame, :badarg, field: field, value: value, limit: limit)

  @doc false
  # {:ok, value} of keyword option `key`, a non-negative integer below 2^bits.
  @spec opt_int(keyword(), atom(), term(), pos_integer()) ::
          {:ok, non_neg_integer()} | {:error, Error.t()}
  def opt_int(opts, key, default, bits) do
    case Keyword.get(opts, key, default) do
      i when is_integer(i) and i >= 0 and i < 1 <<< bits -> {:ok, i}
      other -> {:error, badarg(key, other, (1 <<< bits) - 1)}
    end
  end

  @doc false
  @spec opt_bool(keyword(), atom(), boolean()) :: {:ok, boolean()} | {:error, Error.t()}
  def opt_bool(opts, key, default) do
    case Keyword.get(opts, key, default) do
      b when is_boolean(b) -> {:ok, b}
      other -> {:error, badarg(key, other)}
    end
  end

  @doc false
  @spec check_opts(term()) :: :ok | {:error, Error.t()}
  def check_opts(opts) do
    if Keyword.keyword?(opts), do: :ok, else: {:error, badarg(:opts, opts)}
  end

  defp bang({:ok, value}), do: value
  defp bang({:error, %Error{} = e}), do: raise(e)
end
