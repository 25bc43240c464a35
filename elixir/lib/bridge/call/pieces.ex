defmodule Bridge.Call.Pieces do
  @moduledoc false
  # The pieces of a long result list (protocol/SPEC.md §8.6, "Pieces"), in the
  # caller's process. The worker sends a list of typed-schema values of 131,072
  # or more as pieces before the answer, {:"$bb_piece", count, list} each, at
  # most 4 unacknowledged; the caller decodes each as it comes and acknowledges
  # it, so the worker writes the next meanwhile, and the answer's
  # {:"$bb_pieces", sid, count} is the pieces' lists joined (Bridge.Decoder).
  #
  # The first piece says how long the whole list will be, and how large its
  # values are: the caller's heap is made that large at once
  # (Bridge.Schema.Batch.reserve/2), so the values that pile up are not copied by
  # one collection after another as the next pieces come; finish/1 gives the room
  # back. Every piece must say the same count, and the answer's count must be what
  # they held.
  #
  # A piece that does not decode, or is not a list, fails the call with its
  # error once the answer comes (the worker is replaced when the piece broke
  # the protocol); the pieces after it are acknowledged unread, so the worker is
  # not left waiting.

  alias Bridge.{Config, Decoder, Error, Worker}
  alias Bridge.Schema.Batch

  # lists: sid => {values so far, their lists newest first}; counts: sid => the
  # count its pieces say
  defstruct lists: %{}, counts: %{}, failed: nil

  @type t :: %__MODULE__{
          lists: %{optional(pos_integer()) => {non_neg_integer(), [list()]}},
          counts: %{optional(pos_integer()) => non_neg_integer()},
          failed: Error.t() | nil
        }

  @doc false
  # Piece `seq` of stream `sid` of call `id`, from `worker`: decoded, then acknowledged.
  @spec take(t(), pid(), pos_integer(), tuple(), Config.t()) :: t()
  def take(pieces, worker, id, {sid, seq, piece, resolved}, config) do
    pieces =
      if pieces.failed,
        do: pieces,
        else: read(pieces, worker, {sid, seq}, piece, resolved, config)

    drop(worker, id, {sid, seq, piece, resolved})
    pieces
  end

  @doc false
  # Acknowledges a piece without reading it.
  @spec drop(pid(), pos_integer(), tuple()) :: :ok
  def drop(worker, id, {sid, seq, _piece, _resolved}),
    do: GenServer.cast(worker, {:stream, id, {:chunk_ack, sid, seq}})

  defp read(pieces, worker, {sid, seq}, {:"$bb_piece", count, part}, resolved, config)
       when is_integer(count) and count >= 0 and
              (not is_map_key(pieces.counts, sid) or :erlang.map_get(sid, pieces.counts) == count) do
    case Decoder.decode_result(part, resolved, Bridge.Call.checks(config)) do
      {:ok, list} when is_list(list) ->
        {n, lists} = Map.get(pieces.lists, sid, {0, []})
        pieces = if lists == [], do: reserve(pieces, count, list, part, resolved), else: pieces

        %{
          pieces
          | lists: Map.put(pieces.lists, sid, {n + length(list), [list | lists]}),
            counts: Map.put(pieces.counts, sid, count)
        }

      {:ok, other} ->
        broken(pieces, worker, "piece #{seq} of stream #{sid} holds #{inspect(other, limit: 5)}")

      {:error, %Error{kind: :bad_call} = error} ->
        %{pieces | failed: error}

      {:error, error} ->
        Worker.bad_answer(worker, error)
        %{pieces | failed: error}
    end
  end

  defp read(pieces, worker, {sid, seq}, piece, _resolved, _config),
    do: broken(pieces, worker, "piece #{seq} of stream #{sid} is #{inspect(piece, limit: 5)}")

  defp broken(pieces, worker, what) do
    error =
      Error.new(:bad_frame, :bad_term,
        field: :result,
        message: "bad frame: bad_term: #{what} (expected {:\"$bb_piece\", count, list})"
      )

    Worker.bad_answer(worker, error)
    %{pieces | failed: error}
  end

  # Room for the whole list, sized by its first piece: its values' words, and
  # their payload's bytes, times the pieces to come. The words twice over: what
  # the VM's functions make while the values are read (sub-binaries, floats) waits
  # in heap fragments, which set off a collection once they outgrow the heap's
  # free room.
  defp reserve(pieces, count, [_ | _] = list, part, resolved) when count > length(list) do
    n = length(list)
    words = div(:erts_debug.flat_size(list) * count * 2, n)
    Batch.reserve(words, div(payload_bytes(part, resolved) * count, n))
    pieces
  end

  defp reserve(pieces, _count, _list, _part, _resolved), do: pieces

  defp payload_bytes({:"$bb_schema_list", _, _, data}, _resolved) when is_binary(data),
    do: byte_size(data)

  defp payload_bytes(_part, resolved) do
    for {:lease, _, length, _} <- Tuple.to_list(resolved), reduce: 0, do: (n -> n + length)
  end

  @doc false
  # The call is over: the room reserved, if any, goes back.
  @spec finish() :: :ok
  def finish, do: Batch.release()

  @doc false
  # The error a piece failed with, if any.
  @spec failure(t()) :: Error.t() | nil
  def failure(pieces), do: pieces.failed

  @doc false
  # The list of stream `sid` when `count` values came in it, else :error.
  @spec list(t() | map(), term(), term()) :: {:ok, list()} | :error
  def list(pieces, sid, count) do
    case pieces do
      %{lists: %{^sid => {^count, lists}}} -> {:ok, :lists.append(Enum.reverse(lists))}
      _ -> :error
    end
  end
end
