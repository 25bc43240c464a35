defmodule Bridge.Arrow do
  @moduledoc """
  An Arrow IPC reader and writer in Elixir (protocol/formats/arrow.md), for
  the *stream* format (a Schema message, dictionary batches, record batches
  and the end-of-stream marker, each message framed as `0xFFFFFFFF`, a 32-bit
  metadata length, the Message flatbuffer and the body) and the *file* format
  (the same messages between the `ARROW1` magic and a footer that indexes
  them). Every type of the columnar format is read and written, nested at any
  depth: decimals, times, durations, intervals, fixed-size binaries and lists,
  structs, maps, unions, run-end encoded, views and list views, dictionaries
  of any value type.

  `encode/2` writes every message at a 64-byte-aligned offset and every
  buffer at a 64-byte-aligned body offset, so a stream placed in a slice's
  payload (itself 64-byte aligned) has all its buffers 64-byte aligned in
  memory. `decode/2` reads what any Arrow ≥ 0.15 implementation writes (and
  the older framing without the continuation marker); it checks every length,
  offset, view, type code and run end against the input before use and
  returns a typed error for anything malformed or unsupported (a big-endian
  stream, a dictionary of dictionaries). Bodies compressed with LZ4_FRAME are
  decompressed in Elixir, bodies compressed with ZSTD by libzstd in the NIF
  (`Bridge.NIF.zstd_decompress/2`). Decoded buffers are sub-binaries of the
  input: no copy is made until values are asked for
  (`Bridge.Table.to_rows/2`), and nested values are made only then.

  Types are listed in `Bridge.Arrow.Type`.

  ## Examples

      iex> table = Bridge.Table.from_columns!(id: [1, 2, 3], name: ["a", nil, "ç"])
      iex> stream = Bridge.Arrow.encode(table)
      iex> {:ok, back} = Bridge.Arrow.decode(stream)
      iex> Bridge.Table.to_columns(back)
      %{"id" => [1, 2, 3], "name" => ["a", nil, "ç"]}
      iex> {:error, e} = Bridge.Arrow.decode(binary_part(stream, 0, 100))
      iex> {e.kind, e.reason}
      {:arrow, :truncated}
  """

  alias Bridge.Arrow.{Errors, IPCReader, IPCWriter}
  alias Bridge.{Error, Table}

  @doc """
  Encodes a table as an Arrow IPC stream (the default) or file: one record
  batch per chunk of the table's columns (a table built from terms has one),
  preceded by the dictionaries of dictionary-typed columns whenever they change.

  Options:

    * `:format` — `:stream` (default: what frames of format `arrow_stream`
      carry, `pa.ipc.open_stream`) or `:file` (the IPC file format: `ARROW1`,
      the messages and a footer that indexes them, `pa.ipc.open_file`). A file
      holds one dictionary per field: a column whose dictionary changes between
      batches is refused there (`:dictionary_replacement`).

  Raises `Bridge.Error` (kind `:bad_call`) for a hand-built `%Bridge.Table{}`
  whose columns do not agree with its schema, and for the file case above.

  ## Examples

      iex> table = Bridge.Table.from_columns!(x: [true])
      iex> stream = Bridge.Arrow.encode(table)
      iex> binary_part(stream, byte_size(stream) - 8, 8)
      <<255, 255, 255, 255, 0, 0, 0, 0>>
      iex> file = Bridge.Arrow.encode(table, format: :file)
      iex> {binary_part(file, 0, 6), binary_part(file, byte_size(file) - 6, 6)}
      {"ARROW1", "ARROW1"}
      iex> Bridge.Table.to_columns(Bridge.Arrow.decode!(file))
      %{"x" => [true]}
  """
  @spec encode(Table.t(), keyword()) :: binary()
  def encode(%Table{} = table, opts \\ []) do
    case Keyword.get(opts, :format, :stream) do
      format when format in [:stream, :file] ->
        IPCWriter.write(table, format)

      other ->
        raise Errors.value(:bad_option, field: :format, value: other, limit: ":stream or :file")
    end
  end

  @doc false
  # The metadata of a frame of format arrow_stream holding `table`: the descriptor of
  # protocol/formats/arrow.md.
  @spec frame_descriptor(Table.t()) :: binary()
  def frame_descriptor(%Table{schema: schema, columns: columns, num_rows: n}) do
    fields =
      for f <- schema.fields, do: {f.name, Bridge.Arrow.Type.describe(f.type), f.nullable == true}

    fields = if byte_size(:erlang.term_to_binary(fields)) > 65_536, do: nil, else: fields

    batches =
      case columns do
        [] -> if n == 0, do: 0, else: 1
        [chunks | _] -> length(chunks)
      end

    :erlang.term_to_binary(%{
      "version" => 1,
      "num_rows" => n,
      "num_columns" => length(schema.fields),
      "num_batches" => batches,
      "fields" => fields
    })
  end

  @doc """
  Decodes an Arrow IPC stream, or an IPC file (it starts with `ARROW1`), into
  a `Bridge.Table`.

  A stream ends at the end-of-stream marker; bytes after it are ignored. Of a
  file, the schema, dictionaries and record batches its footer points at are
  read, in the footer's order.

  Options:

    * `:require_eos` — refuse a stream that ends without the end-of-stream
      marker, even on a message boundary (default `true`)
    * `:validate_utf8` — check that utf8 columns hold valid UTF-8 split at
      character boundaries (default `true`)
    * `:max_rows` — the most rows accepted over all batches, and the longest
      array, nested ones included (default 2^32)
    * `:max_fields` — the most schema fields, nested ones included (default 100_000)
    * `:max_decompressed` — the largest decompressed buffer (default 2^32 bytes)

  Errors are `%Bridge.Error{kind: :arrow}` with reasons such as `:truncated`,
  `:bad_flatbuffer`, `:bad_length`, `:buffer_out_of_bounds`,
  `:buffer_too_short`, `:bad_offsets`, `:bad_utf8`, `:missing_schema`,
  `:unsupported_type` and `:unsupported_compression`.

  ## Examples

      iex> {:error, e} = Bridge.Arrow.decode(<<1, 2, 3>>)
      iex> e.reason
      :truncated
  """
  @spec decode(binary(), keyword()) :: {:ok, Table.t()} | {:error, Error.t()}
  def decode(stream, opts \\ [])

  def decode(stream, opts) when is_binary(stream) and is_list(opts) do
    Errors.catching(fn -> {:ok, IPCReader.read(stream, opts)} end)
  end

  def decode(stream, _opts) do
    {:error, Errors.value(:wrong_type, field: :stream, value: stream, limit: "a binary")}
  end

  @doc "Like `decode/2`, raising `Bridge.Error`."
  @spec decode!(binary(), keyword()) :: Table.t()
  def decode!(stream, opts \\ []) do
    case decode(stream, opts) do
      {:ok, table} -> table
      {:error, error} -> raise error
    end
  end
end
