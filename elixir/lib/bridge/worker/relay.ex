defmodule Bridge.Worker.Relay do
  @moduledoc false
  # A relay process per call with streams (protocol/SPEC.md §8.6), between a
  # worker and its caller. The worker hands it what the interpreter sent, in
  # order, and goes on; the relay resolves slices (leases, binaries) outside the
  # worker's heap, collects its own garbage after each, and keeps the order, the
  # call's reply last:
  #
  #   * elements of a result stream go to the caller as
  #     {:bridge_stream, worker, id, {:element, seq, checkpoint, body, resolved}};
  #   * chunks of a chunked result binary are copied out of shared memory (so
  #     the worker's slices come back at once), acknowledged through the worker,
  #     counted and checksummed, and joined when the answer comes: they go last
  #     in its `resolved`, as {:chunks, %{sid => binary}};
  #   * pieces of a long result list (elements {:"$bb_piece", count, list} of
  #     such a stream) go to the caller as they come, counted and checksummed here:
  #     {:bridge_piece, tag, worker, id, {sid, seq, piece, resolved}}, sent where
  #     the reply goes (the alias of the call's `from`, `tag`: a caller that gave
  #     up drops them), so the caller waits for them as for the reply; it decodes
  #     and acknowledges each (Bridge.Call.Pieces). When the caller is gone
  #     (`:orphaned`), the relay acknowledges them;
  #   * the reply goes to the caller after everything before it;
  #   * a call that timed out (`{:cancel, from, reply}`, SPEC §8.7): its caller
  #     gets that reply, and what comes for the call after it is let go.
  #
  # It ends after the reply, or with the worker.

  alias Bridge.{Control, Decoder, Error}
  alias Bridge.Worker.Objects

  @doc false
  # `from` is the call's: its pid takes the elements, its reply address the pieces.
  @spec start(GenServer.from()) :: pid()
  def start({consumer, tag}) do
    worker = self()

    {pieces_to, tag} =
      case tag do
        [:alias | alias] -> {alias, alias}
        tag -> {consumer, tag}
      end

    spawn(fn ->
      ref = Process.monitor(worker)

      loop(%{
        consumer: consumer,
        pieces_to: pieces_to,
        tag: tag,
        worker: worker,
        ref: ref,
        chunks: %{},
        failed: nil,
        orphaned: false,
        cancelled: false
      })
    end)
  end

  defp loop(relay) do
    receive do
      {:element, id, seq, point, body, plan, port} ->
        element(relay, {id, seq, point, body}, plan, port)
        loop(relay)

      {:chunk, id, sid, seq, body, plan, port} ->
        relay |> chunk({id, sid, seq, body}, plan, port) |> loop()

      {:chunk_done, sid, count, checksum} ->
        relay |> chunk_done(sid, count, checksum) |> loop()

      :orphaned ->
        relay |> orphaned() |> loop()

      # the call timed out (SPEC §8.7): its caller hears that now, nothing later
      {:cancel, from, reply} ->
        GenServer.reply(from, reply)
        loop(%{relay | cancelled: true})

      {:answer, _from, _body, plan, port, _timing} when relay.cancelled ->
        _ = resolve(relay, plan, port)
        :ok

      {:answer, from, body, plan, port, timing} ->
        answer(relay, from, body, plan, port, timing)

      {:reply, _from, _reply} when relay.cancelled ->
        :ok

      {:reply, from, reply} ->
        GenServer.reply(from, if(relay.failed, do: {:error, relay.failed}, else: reply))

      {:DOWN, ref, :process, _, _} when ref == relay.ref ->
        :ok
    end
  end

  defp element(%{cancelled: true} = relay, _element, plan, port) do
    _ = resolve(relay, plan, port)
    :erlang.garbage_collect()
  end

  defp element(relay, {id, seq, point, body}, plan, port) do
    case resolve(relay, plan, port) do
      {:ok, resolved} ->
        send(
          relay.consumer,
          {:bridge_stream, relay.worker, id, {:element, seq, point, body, resolved}}
        )

      {:error, error} ->
        send(relay.consumer, {:bridge_stream, relay.worker, id, {:error, error}})
    end

    # the binaries are the consumer's now: none stays alive here
    :erlang.garbage_collect()
  end

  # A chunk is copied out and acknowledged at once; a broken one fails the call
  # (the worker is replaced, and the reply says why). A piece goes on to the
  # caller.
  defp chunk(%{failed: nil} = relay, {_id, sid, seq, body} = chunk, plan, port) do
    entry = Map.get(relay.chunks, sid, %{parts: [], count: 0, chain: 0, done: false})

    relay =
      with {:ok, resolved} <- resolve(relay, plan, port),
           {:ok, term} <- Control.decode_body(body) do
        case {piece?(term), entry} do
          {false, %{piece: _}} -> failed(relay, "chunk #{seq} of stream #{sid} after pieces")
          {false, _} -> take_chunk(relay, chunk, term, resolved, entry)
          {true, %{parts: []}} -> piece(relay, chunk, term, resolved, entry)
          {true, _} -> failed(relay, "piece #{seq} of stream #{sid} after chunks")
        end
      else
        {:error, %Error{} = error} -> fail(relay, error)
      end

    :erlang.garbage_collect()
    relay
  end

  defp chunk(relay, _chunk, plan, port) do
    _ = resolve(relay, plan, port)
    relay
  end

  # The elements of a chunked binary are binaries, a piece is {:"$bb_piece", count, list}.
  defp piece?(term), do: match?({:"$bb_piece", _, _}, term)

  defp take_chunk(relay, {id, sid, seq, body}, term, resolved, entry) do
    case Decoder.decode_result(term, resolved, true) do
      {:ok, bin} when is_binary(bin) ->
        GenServer.cast(relay.worker, {:stream, id, {:chunk_ack, sid, seq}})
        chain = Bridge.Stream.chain(entry.chain, seq, body)
        entry = %{entry | parts: [:binary.copy(bin) | entry.parts], count: seq, chain: chain}
        %{relay | chunks: Map.put(relay.chunks, sid, entry)}

      {:ok, other} ->
        failed(relay, "chunk #{seq} of stream #{sid} is #{inspect(other, limit: 3)}")

      {:error, %Error{} = error} ->
        fail(relay, error)
    end
  end

  # The caller decodes a piece, and acknowledges it; the relay keeps the count
  # and the chain.
  defp piece(relay, {id, sid, seq, body}, term, resolved, entry) do
    if relay.orphaned,
      do: GenServer.cast(relay.worker, {:stream, id, {:chunk_ack, sid, seq}}),
      else:
        send(
          relay.pieces_to,
          {:bridge_piece, relay.tag, relay.worker, id, {sid, seq, term, resolved}}
        )

    chain = Bridge.Stream.chain(entry.chain, seq, body)
    entry = Map.merge(entry, %{count: seq, chain: chain, piece: id})
    %{relay | chunks: Map.put(relay.chunks, sid, entry)}
  end

  # The caller is gone: acknowledge its pieces (what it took and what comes).
  defp orphaned(relay) do
    for {sid, %{piece: id, count: seq}} <- relay.chunks,
        do: GenServer.cast(relay.worker, {:stream, id, {:chunk_ack, sid, seq}})

    %{relay | orphaned: true}
  end

  defp chunk_done(relay, sid, count, checksum) do
    case relay.chunks do
      %{^sid => %{count: ^count, chain: ^checksum} = entry} ->
        %{relay | chunks: Map.put(relay.chunks, sid, %{entry | done: true})}

      _ when relay.failed != nil ->
        relay

      chunks ->
        got = Map.get(chunks, sid, %{count: 0, chain: 0})

        failed(
          relay,
          "chunked stream #{sid} ended after #{count} chunks (checksum #{checksum}); " <>
            "#{got.count} came (checksum #{got.chain})"
        )
    end
  end

  defp answer(relay, from, body, plan, port, timing) do
    reply =
      with nil <- relay.failed,
           :ok <- all_done(relay.chunks),
           {:ok, resolved} <- resolve(relay, plan, port) do
        joined =
          for {sid, e} <- relay.chunks,
              not is_map_key(e, :piece),
              into: %{},
              do: {sid, joined(e.parts)}

        {:ok, {body, Tuple.append(resolved, {:chunks, joined}), relay.worker, timing}}
      else
        %Error{} = error -> {:error, error}
        {:error, %Error{} = error} -> {:error, error}
      end

    GenServer.reply(from, reply)
  end

  defp all_done(chunks) do
    case Enum.find(chunks, fn {_sid, e} -> not e.done end) do
      nil -> :ok
      {sid, _} -> {:error, broken("the answer came before chunked stream #{sid} ended")}
    end
  end

  defp joined(parts), do: parts |> Enum.reverse() |> IO.iodata_to_binary()

  defp resolve(_relay, [], _port), do: {:ok, {}}

  defp resolve(relay, plan, port) do
    case Objects.resolve(plan) do
      {:ok, resolved, sealed} ->
        if sealed != [], do: GenServer.cast(relay.worker, {:sealed_mapped, port, sealed})
        {:ok, resolved}

      {:error, error} ->
        Bridge.Worker.bad_answer(relay.worker, error)
        {:error, error}
    end
  end

  defp failed(relay, message), do: fail(relay, broken(message))

  defp fail(relay, error) do
    Bridge.Worker.bad_answer(relay.worker, error)
    %{relay | failed: error, chunks: %{}}
  end

  @doc false
  @spec broken(String.t()) :: Error.t()
  def broken(message) do
    Error.new(:bad_frame, :stream_broken,
      field: :control_frame,
      message: "bad frame: stream_broken: #{message}"
    )
  end
end
