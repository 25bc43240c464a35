defmodule Bridge.Frame.Dump do
  @moduledoc false
  # The bytes Bridge.Frame.dump/2 writes (protocol/SPEC.md §5): the frame a
  # value was read from, as it is in the worker's slice, or else the frame the
  # bridge writes for the value as an argument, with this node's provenance.

  alias Bridge.{Arrow, Buffer, Error, Frame, Header, NIF, Provenance, Table, Tensor}
  alias Bridge.Provenance.Arguments
  alias Bridge.Tensor.{Bundle, COO, Wire}

  @doc false
  @spec frame_bytes(term()) :: {:ok, binary()} | {:error, Error.t()}
  # A frame read from a slice holds no copy of its block: its slice has it.
  def frame_bytes(%Frame{header: h, provenance: ""} = frame)
      when h.provenance_length > 0 and is_binary(frame.payload) do
    case held(frame.payload) do
      nil -> frame_bytes(%{frame | header: %{h | provenance_length: 0, provenance_checksum: 0}})
      bytes -> {:ok, bytes}
    end
  end

  def frame_bytes(%Frame{header: h} = frame) do
    with {:ok, header} <- Header.encode(h, frame.metadata) do
      padding = h.payload_offset - 128 - h.metadata_length - byte_size(frame.provenance)

      if padding >= 0,
        do:
          {:ok,
           IO.iodata_to_binary([
             header,
             frame.metadata,
             frame.provenance,
             :binary.copy(<<0>>, padding),
             frame.payload
           ])},
        else: fresh(frame.payload)
    end
  end

  def frame_bytes(value) do
    case held(value) do
      nil -> fresh(value)
      bytes -> {:ok, bytes}
    end
  end

  # The whole frame a binary inside `value` lies in (a worker's result).
  defp held(value), do: Frame.first_binary(value, &held_bytes/1)

  defp held_bytes(bin) do
    case NIF.peer_frame_of(bin, true) do
      {:ok, {copy, len, _at, _pid, _fd, _off}} ->
        case Header.parse(copy, len) do
          {:ok, h} ->
            binary_part(copy, 0, min(byte_size(copy), h.payload_offset + h.payload_length))

          {:error, _} ->
            nil
        end

      :none ->
        nil
    end
  end

  defp fresh(value) do
    ctx = Arguments.default()

    with {:ok, {payload, opts}} <- payload(value) do
      opts =
        opts
        |> Keyword.put(:provenance, elem(Arguments.block(ctx, payload), 0))
        |> Keyword.put(:created_at, Provenance.now())
        |> Keyword.put(:frame_id, Provenance.frame_id())

      Header.encode_frame(IO.iodata_to_binary(payload), opts)
    end
  end

  defp payload(bin) when is_binary(bin), do: {:ok, {bin, [format: :raw]}}
  defp payload(%Buffer{data: data}) when is_binary(data), do: {:ok, {data, [format: :raw]}}

  defp payload(%s{} = t) when s in [Tensor, Bundle, COO] do
    with :ok <- s.validate(t), do: {:ok, Wire.frame(t)}
  end

  defp payload(%Table{} = table) do
    {:ok, {Arrow.encode(table), [format: :arrow_stream, metadata: Arrow.frame_descriptor(table)]}}
  rescue
    e in Error -> {:error, e}
  end

  defp payload(term) do
    {:ok, {:erlang.term_to_binary(term), [format: :etf]}}
  rescue
    ArgumentError -> {:error, Error.new(:bad_call, :bad_term, field: :value, value: term)}
  end
end
