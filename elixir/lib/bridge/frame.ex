defmodule Bridge.Frame do
  @moduledoc """
  A frame read from a slice or decoded from a binary (protocol/SPEC.md §5), and
  what can be learnt of one without decoding its payload.

    * `header` — the validated `Bridge.Header`.
    * `metadata` — the metadata bytes, a private copy when read from a slice.
    * `payload` — the payload bytes. When read from a slice this is a zero-copy
      binary over the shared memory; the slice is not rewritten while it (or any
      sub-binary of it) is alive, because it holds the reader's lease (SPEC §4).
      Use `:binary.copy/1` to keep bytes without holding the lease.
    * `provenance` — the provenance block's bytes, unchecked (SPEC §5.4), when
      the frame was decoded from a binary; `""` otherwise.

  ## Describing a value

  `describe/1` tells what a result read from shared memory is, where it came
  from and what it went through — from its header, metadata and provenance
  block only: the payload is never read, so its checksum is never verified
  (`checksum: :not_verified`).

      {:ok, t} = Bridge.call({:model, :weights}, [], meta: %{"round" => 12})
      {:ok, d} = Bridge.Frame.describe(t)
      d.meta          #=> %{"round" => 12}
      d.producer      #=> %{"side" => "python", "worker" => "Bridge.0", ...}
      d.lineage       #=> [%{"handler" => "model.weights", "call" => ..., ...}]

  `dump/2` writes a value's frame to a file; `describe_file/1` (and
  `mix beambridge.inspect PATH`, `python -m beambridge inspect PATH`) describe
  it again, as they describe a live slice named `/proc/PID/fd/FD@OFFSET`
  (`handle` in a description).
  """

  alias Bridge.{Error, Header, NIF, Provenance}
  alias Bridge.Frame.Description

  @enforce_keys [:header, :metadata, :payload]
  defstruct [:header, :metadata, :payload, provenance: ""]

  @type t :: %__MODULE__{
          header: Bridge.Header.t(),
          metadata: binary(),
          payload: binary(),
          provenance: binary()
        }

  @typedoc "What `describe/1` returns: see `Bridge.Frame.Description`."
  @type description :: Description.t()

  @doc """
  Describes a frame without reading its payload: `value` is a result whose
  bytes lie in a worker's slice (a binary, `%Bridge.Tensor{}`,
  `%Bridge.Buffer{}`, `%Bridge.Table{}`), a `%Bridge.Frame{}`, a binary that
  is a whole frame (a dump read into memory), or a live slice's handle
  `"/proc/PID/fd/FD@OFFSET"` (a description's `handle`).

  Values rebuilt as terms (records, packed lists, typed schemas, custom
  types, anything that came inline) hold no frame: they give `:not_a_frame`.
  See `Bridge.Frame.Description` for the fields.

  ## Examples

      iex> frame = Bridge.Header.encode_frame!("abc", metadata: "m", format: :raw)
      iex> {:ok, d} = Bridge.Frame.describe(frame)
      iex> {d.format, d.lengths.payload, d.checksum}
      {:raw, 3, :not_verified}
      iex> {:error, e} = Bridge.Frame.describe(%{a: 1})
      iex> e.reason
      :not_a_frame
  """
  @spec describe(term()) :: {:ok, description()} | {:error, Error.t()}
  def describe(%__MODULE__{provenance: "", header: %{provenance_length: n}} = frame) when n > 0 do
    case source(frame.payload) do
      {:ok, found} -> {:ok, Description.build(found)}
      _ -> {:ok, Description.build(from_frame(frame))}
    end
  end

  def describe(%__MODULE__{} = frame), do: {:ok, Description.build(from_frame(frame))}

  def describe(value) do
    case find_source(value) do
      {:ok, found} ->
        {:ok, Description.build(found)}

      {:error, %Error{}} = error ->
        error

      :none ->
        cond do
          frame_bytes?(value) ->
            with {:ok, frame} <- Header.decode_frame(value, verify: false), do: describe(frame)

          handle?(value) ->
            describe_file(value)

          true ->
            {:error, not_a_frame(value)}
        end
    end
  end

  @doc "Like `describe/1`, raising `Bridge.Error`."
  @spec describe!(term()) :: description()
  def describe!(value), do: bang(describe(value))

  @doc """
  Describes the frame in the file at `path` (a `dump/2`), or the live slice
  `"/proc/PID/fd/FD@OFFSET"` (a description's `handle`, while its owner lives
  and the reader runs as the same user). Reads the header, the metadata and
  the provenance block: never the payload.
  """
  @spec describe_file(Path.t()) :: {:ok, description()} | {:error, Error.t()}
  def describe_file(path) when is_binary(path) do
    {file, offset} = split_handle(path)

    with {:ok, io} <- open(file),
         {:ok, found} <- read_head(io, file, offset) do
      {:ok, Description.build(Map.put(found, :handle, if(offset > 0, do: path)))}
    end
  end

  @doc """
  Writes `value`'s frame to the file `path`: the frame it was read from (header,
  metadata, provenance block and payload, as they are) when it is a result in a
  worker's slice or a `%Bridge.Frame{}`; else the frame the bridge would write
  for it as an argument (a binary: raw; a tensor, a table, ...).
  """
  @spec dump(term(), Path.t()) :: :ok | {:error, Error.t()}
  def dump(value, path) do
    with {:ok, bytes} <- Bridge.Frame.Dump.frame_bytes(value),
         :ok <- write(path, bytes),
         do: :ok
  end

  @doc false
  # The frame a binary's bytes lie in, when it is a worker's result held by
  # this node: header (validated, SPEC §6), metadata, provenance (checked,
  # §5.4; nil when none, an Error when it does not read), and where it lies.
  @spec source(binary()) :: {:ok, map()} | :none | {:error, Error.t()}
  def source(bin) when is_binary(bin) do
    case NIF.peer_frame_of(bin, false) do
      {:ok, {head, len, at, pid, fd, off}} ->
        with {:ok, h} <- Header.parse(head, len) do
          {:ok,
           %{
             header: h,
             metadata: binary_part(head, 128, h.metadata_length),
             provenance: provenance(h, head),
             frame_size: len,
             at: at,
             handle: "/proc/#{pid}/fd/#{fd}@#{off}"
           }}
        end

      :none ->
        :none
    end
  end

  defp provenance(h, head) do
    case Provenance.read(h, head) do
      {:ok, p} -> p
      {:error, e} -> e
    end
  end

  defp from_frame(%__MODULE__{header: h} = frame) do
    size = h.payload_offset + h.payload_length
    head = [Header.encode!(h, frame.metadata), frame.metadata, frame.provenance]

    %{
      header: h,
      metadata: frame.metadata,
      provenance: provenance(h, IO.iodata_to_binary(head)),
      frame_size: size,
      handle: nil
    }
  end

  # The first binary inside `value` that lies in a worker's slice.
  defp find_source(value) do
    first_binary(value, fn bin ->
      case source(bin) do
        :none -> nil
        found -> found
      end
    end) || :none
  end

  @doc false
  # `fun` applied to the binaries inside `value` (a binary, or in structs, maps,
  # tuples and lists; at most 64 looked at) until it returns something other
  # than nil: that, or nil (Bridge.Frame.Dump looks for a value's frame too).
  @spec first_binary(term(), (binary() -> term())) :: term()
  def first_binary(value, fun), do: value |> first_binary(fun, 64) |> elem(0)

  defp first_binary(_value, _fun, 0), do: {nil, 0}
  defp first_binary(bin, fun, left) when is_binary(bin), do: {fun.(bin), left - 1}

  defp first_binary(%{__struct__: _} = s, fun, left),
    do: first_binary(Map.values(Map.from_struct(s)), fun, left)

  defp first_binary(%{} = m, fun, left), do: first_binary(Map.values(m), fun, left)
  defp first_binary(t, fun, left) when is_tuple(t), do: first_binary(Tuple.to_list(t), fun, left)

  defp first_binary(list, fun, left) when is_list(list) do
    Enum.reduce_while(list, {nil, left - 1}, fn x, {nil, left} ->
      case first_binary(x, fun, left) do
        {nil, left} when left > 0 -> {:cont, {nil, left}}
        done -> {:halt, done}
      end
    end)
  end

  defp first_binary(_other, _fun, left), do: {nil, left - 1}

  defp frame_bytes?(<<"BBFH", _::binary>>), do: true
  defp frame_bytes?(_value), do: false

  defp handle?(value), do: is_binary(value) and value =~ ~r"^/proc/\d+/fd/\d+@\d+$"

  defp not_a_frame(value) do
    Error.new(:bad_call, :not_a_frame,
      field: :value,
      value: value,
      message:
        "bad call: not_a_frame: #{inspect(value, limit: 3, printable_limit: 40)} holds no " <>
          "frame: only a result read from shared memory (a binary, tensor, buffer or " <>
          "table at or above the pool's threshold), a %Bridge.Frame{} or a frame's bytes " <>
          "can be described"
    )
  end

  defp split_handle(path) do
    case Regex.run(~r/^(.*)@(\d+)$/, path) do
      [_, file, offset] -> {file, String.to_integer(offset)}
      nil -> {path, 0}
    end
  end

  defp open(file) do
    case :file.open(file, [:read, :raw, :binary]) do
      {:ok, io} -> {:ok, io}
      {:error, posix} -> {:error, file_error(file, posix)}
    end
  end

  defp read_head(io, file, offset) do
    size = file_size(file, io)

    try do
      with {:ok, head} <- pread(io, file, offset, 128),
           <<_::binary-size(6), minor::little-16, _::binary-size(28), ml::little-32,
             _::binary-size(48), pl::little-32, _::binary>> <- pad(head),
           pl = if(minor == 0, do: 0, else: min(pl, Provenance.max_size())),
           ml = min(ml, Header.max_metadata()),
           {:ok, rest} <- pread(io, file, offset + 128, ml + pl),
           head = head <> rest,
           {:ok, h} <- Header.parse(head, max(size - offset, 0)) do
        {:ok,
         %{
           header: h,
           metadata: binary_part(head, 128, h.metadata_length),
           provenance: provenance(h, head),
           frame_size: max(size - offset, 0)
         }}
      end
    after
      :file.close(io)
    end
  end

  defp pad(head) when byte_size(head) >= 128, do: head
  defp pad(head), do: head <> :binary.copy(<<0>>, 128 - byte_size(head))

  defp file_size(file, io) do
    case :file.position(io, :eof) do
      {:ok, n} when n > 0 -> n
      _ -> with({:ok, %{size: n}} <- File.stat(file), do: n, else: (_ -> 0))
    end
  end

  defp pread(_io, _file, _offset, 0), do: {:ok, ""}

  defp pread(io, file, offset, n) do
    case :file.pread(io, offset, n) do
      {:ok, data} -> {:ok, data}
      :eof -> {:ok, ""}
      {:error, posix} -> {:error, file_error(file, posix)}
    end
  end

  defp write(path, bytes) do
    case File.write(path, bytes) do
      :ok -> :ok
      {:error, posix} -> {:error, file_error(path, posix)}
    end
  end

  defp file_error(file, posix) do
    Error.new(:bad_call, :badarg,
      field: :path,
      value: file,
      message: "bad call: badarg: #{file}: #{:file.format_error(posix)}"
    )
  end

  defp bang({:ok, v}), do: v
  defp bang({:error, e}), do: raise(e)
end
