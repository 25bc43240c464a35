defmodule Bridge.Worker.Streams do
  @moduledoc false
  # The streams of the call a worker runs (protocol/SPEC.md §8.6), on the
  # worker process's side: it only routes. The caller's process (the consumer of
  # a result stream, the producer of argument streams: Bridge.Stream.Session)
  # encodes and decodes; this module checks the worker's stream frames, forwards
  # elements and acknowledgements to the caller, and writes the caller's
  # elements, acknowledgements and cancellations to the interpreter.
  #
  # To the caller, as plain messages:
  #   {:bridge_stream, worker, id, :started}
  #   {:bridge_stream, worker, id, {:element, seq, checkpoint, body, resolved}}
  #   {:bridge_stream, worker, id, {:ack, sid, seq}}
  #   {:bridge_stream, worker, id, {:error, error}}   (an element's slices failed)
  # The elements of a result stream, and then the call's reply, go through a
  # relay process of the call: it resolves each element's slices (leases,
  # binaries) outside the worker's heap, collects its own garbage after each, and
  # keeps them in order, the reply last, so a consumer that sees the reply has
  # seen every element before it. The reply of a result stream is
  # {:ok, {:stream_done, count, checksum}}, or the error that ended it.
  #
  # From the caller, as casts {:stream, id, message}: {:ack, seq} and :cancel
  # for the result stream, {:feed, frame, slices} and {:send, frame} for
  # argument streams.

  alias Bridge.{Control, Error}
  alias Bridge.Worker.{Interpreter, Objects, Relay, Replies}

  # Chunks of a chunked result binary on their way at once (SPEC §8.6).
  @chunk_window 4

  @type t :: %{
          consumer: pid(),
          ref: reference(),
          relay: pid() | nil,
          result:
            nil
            | %{
                window: pos_integer(),
                timeout: timeout(),
                received: non_neg_integer(),
                acked: non_neg_integer(),
                cancelled: boolean()
              },
          feeds: [pos_integer()],
          chunks: %{optional(pos_integer()) => map()},
          orphaned: boolean()
        }

  @doc false
  # The streams of a request, or nil for a call without any. The caller is
  # watched: if it goes, the interpreter is told to stop.
  @spec open(map(), GenServer.from()) :: t() | nil
  def open(request, {consumer, _tag} = from) do
    result = Map.get(request, :stream)
    feeds = Map.get(request, :feeds, [])

    if result == nil and feeds == [] do
      nil
    else
      %{
        consumer: consumer,
        ref: Process.monitor(consumer),
        relay: result && Relay.start(from),
        result: result && opened(result),
        feeds: feeds,
        chunks: %{},
        orphaned: false
      }
    end
  end

  @doc false
  # Why a worker of protocol minor `minor` cannot run `request`: streams (the
  # result's, the arguments', pieces) are 2.3 (SPEC §8.4, §8.6); nil when it can.
  @spec unspoken(map(), non_neg_integer()) :: Error.t() | nil
  def unspoken(request, minor) when minor < 3 do
    if Map.has_key?(request, :stream) or Map.get(request, :feeds, []) != [] do
      Error.new(:bad_call, :old_worker,
        field: :protocol,
        value: "2.#{minor}",
        limit: "2.3",
        message:
          "bad call: old_worker: the call has streams (a Bridge.stream/3, a Bridge.Stream " <>
            "argument, or a list of 131,072 typed values or more, which goes in pieces), " <>
            "and its worker speaks protocol 2.#{minor}; streams need 2.3: install the " <>
            "same beambridge release for Python and for Elixir"
      )
    end
  end

  def unspoken(_request, _minor), do: nil

  # A call whose result holds chunked binaries (§8.6) gets its streams, and a
  # relay, when the first chunk comes.
  defp for_chunks(nil, %{from: {consumer, _} = from}) do
    %{
      consumer: consumer,
      ref: Process.monitor(consumer),
      relay: Relay.start(from),
      result: nil,
      feeds: [],
      chunks: %{},
      orphaned: false
    }
  end

  defp for_chunks(%{relay: nil} = streams, call) do
    relay = Relay.start(call.from)
    if streams.orphaned, do: send(relay, :orphaned)
    %{streams | relay: relay}
  end

  defp for_chunks(streams, _call), do: streams

  # A resumed stream goes on from the elements the consumer took (`start`).
  defp opened(result) do
    start = Map.get(result, :start, 0)
    Map.merge(result, %{received: start, acked: start, cancelled: false})
  end

  @doc false
  # The call is in the interpreter: tell the caller which worker runs it.
  @spec started(t(), pos_integer()) :: :ok
  def started(streams, id) do
    send(streams.consumer, {:bridge_stream, self(), id, :started})
    :ok
  end

  @doc false
  # The call's reply: through the relay when there is one (after the elements).
  # A cancelled call's caller had its reply (cancel/2): nothing more goes to it.
  @spec reply(map(), term()) :: :ok
  def reply(%{streams: %{relay: relay}, from: from}, reply) when is_pid(relay) do
    send(relay, {:reply, from, reply})
    :ok
  end

  def reply(%{cancelled: true}, _reply), do: :ok
  def reply(%{from: from}, reply), do: GenServer.reply(from, reply)

  @doc false
  # The call timed out and its handler is being interrupted (SPEC §8.7): the
  # caller gets `reply` now, after the elements already on their way to it; what
  # the interpreter sends for the call from now on is let go, never delivered.
  @spec cancel(map(), term()) :: map()
  def cancel(%{streams: %{relay: relay}, from: from} = call, reply) when is_pid(relay) do
    send(relay, {:cancel, from, reply})
    %{call | cancelled: true}
  end

  def cancel(%{from: from} = call, reply) do
    GenServer.reply(from, reply)
    %{call | cancelled: true}
  end

  @doc false
  # The answer {:ok, ...} of a call: through the relay when there is one (it
  # joins the chunked binaries), else resolved as any answer is.
  @spec answer(map(), binary(), [tuple()], port() | reference(), Replies.timing()) :: term()
  def answer(%{streams: %{relay: relay}, from: from}, body, plan, port, timing)
      when is_pid(relay),
      do: send(relay, {:answer, from, body, plan, port, timing})

  def answer(%{cancelled: true}, _body, plan, port, _timing), do: Replies.discard(plan, port)

  def answer(%{from: from}, body, plan, port, timing),
    do: Replies.answer(from, body, plan, port, timing)

  @doc false
  # The call is over.
  @spec close(t() | nil) :: :ok
  def close(nil), do: :ok

  def close(streams) do
    Process.demonitor(streams.ref, [:flush])
    :ok
  end

  @doc false
  # Is the interpreter waiting for the consumer (the window is full)? Then a
  # stream's per-element timeout is not the interpreter's fault.
  @spec waiting_for_consumer?(t() | nil) :: boolean()
  def waiting_for_consumer?(%{result: %{} = r}), do: r.received - r.acked >= r.window
  def waiting_for_consumer?(_streams), do: false

  @doc false
  # The timeout of each element of a result stream, or nil.
  @spec element_timeout(t() | nil) :: timeout() | nil
  def element_timeout(%{result: %{timeout: timeout}}), do: timeout
  def element_timeout(_streams), do: nil

  @doc false
  # A stream frame of the call in flight from the interpreter: the streams and
  # objects after it, the call's reply (the result stream ended), or what is
  # wrong with it.
  @spec frame(map(), t() | nil, tuple(), binary()) ::
          {:ok, t(), Objects.t()} | {:reply, term()} | {:error, Error.t()} | :unexpected
  def frame(state, streams, {:element, _, sid, _, _, _} = envelope, body)
      when body != "" and is_integer(sid) and sid > 0,
      do: chunk(state, for_chunks(streams, state.call), envelope, body)

  def frame(state, streams, {:done, _id, sid, count, checksum}, "")
      when is_integer(sid) and sid > 0 do
    case streams do
      %{chunks: %{^sid => c}} when c.received == count ->
        send(streams.relay, {:chunk_done, sid, count, checksum})
        {:ok, %{streams | chunks: Map.put(streams.chunks, sid, %{c | done: true})}, state.objects}

      _ ->
        {:error, broken("chunked stream #{sid} ended at #{count}, not what came")}
    end
  end

  def frame(_state, nil, _envelope, _body), do: :unexpected

  def frame(state, streams, {:element, _, _, _, _, _} = envelope, body) when body != "",
    do: element(state, streams, envelope, body)

  def frame(state, streams, {:ack, id, sid, seq}, "") do
    with :ok <- ack(streams, id, sid, seq), do: {:ok, streams, state.objects}
  end

  def frame(_state, streams, {:done, _id, 0, count, checksum}, "") do
    with {:ok, reply} <- done(streams, count, checksum), do: {:reply, {:ok, reply}}
  end

  def frame(_state, _streams, envelope, body),
    do: {:error, broken("#{inspect(envelope, limit: 8)} (body of #{byte_size(body)} bytes)")}

  @doc false
  # Element `seq` of the result stream from the interpreter.
  @spec element(map(), t(), tuple(), binary()) :: {:ok, t(), Objects.t()} | {:error, Error.t()}
  def element(state, %{result: %{} = r} = streams, {:element, id, 0, seq, point, entries}, body)
      when is_integer(seq) and (is_binary(point) or point == nil) do
    cond do
      seq != r.received + 1 or seq - r.acked > r.window ->
        {:error,
         broken(
           "element #{seq} of the result stream came after #{r.received}, " <>
             "#{r.acked} acknowledged, window #{r.window}"
         )}

      true ->
        with {:ok, plan, objects} <- Objects.plan(state.objects, entries, state.config.untrusted) do
          deliver(streams, id, {seq, point, body}, plan, state.port)
          {:ok, %{streams | result: %{r | received: seq}}, objects}
        end
    end
  end

  def element(_state, _streams, envelope, _body),
    do: {:error, broken("#{inspect(envelope, limit: 8)} for a call with no result stream")}

  # Chunk `seq` of the chunked binary `sid` of the result: at most
  # `@chunk_window` ahead of the relay's acknowledgements.
  defp chunk(state, streams, {:element, id, sid, seq, nil, entries}, body) do
    c = Map.get(streams.chunks, sid, %{received: 0, acked: 0, done: false})

    if seq != c.received + 1 or seq - c.acked > @chunk_window or c.done do
      {:error, broken("chunk #{seq} of chunked stream #{sid} came after #{c.received}")}
    else
      with {:ok, plan, objects} <- Objects.plan(state.objects, entries, state.config.untrusted) do
        send(streams.relay, {:chunk, id, sid, seq, body, plan, state.port})
        chunks = Map.put(streams.chunks, sid, %{c | received: seq})
        {:ok, %{streams | chunks: chunks}, objects}
      end
    end
  end

  defp chunk(_state, _streams, envelope, _body),
    do: {:error, broken("#{inspect(envelope, limit: 8)}: a chunk carries no checkpoint")}

  defp deliver(streams, id, {seq, point, body}, plan, port),
    do: send(streams.relay, {:element, id, seq, point, body, plan, port})

  @doc false
  # The interpreter took elements of argument stream `sid` up to `seq`.
  @spec ack(t(), pos_integer(), term(), term()) :: :ok | {:error, Error.t()}
  def ack(streams, id, sid, seq) when is_integer(sid) and is_integer(seq) do
    cond do
      sid in streams.feeds ->
        send(streams.consumer, {:bridge_stream, self(), id, {:ack, sid, seq}})
        :ok

      # the feeds were aborted (caller_down/3): an ack may cross the abort
      streams.orphaned ->
        :ok

      true ->
        {:error, broken("an ack of stream #{sid}, which call #{id} does not feed")}
    end
  end

  @doc false
  # The end of the result stream: its count and checksum are the consumer's to
  # check.
  @spec done(t(), term(), term()) :: {:ok, term()} | {:error, Error.t()}
  def done(%{result: %{} = r}, count, checksum)
      when is_integer(count) and is_integer(checksum) do
    if count == r.received,
      do: {:ok, {:stream_done, count, checksum}},
      else: {:error, broken("the result stream ended at #{count}; #{r.received} elements came")}
  end

  def done(_streams, _count, _checksum),
    do: {:error, broken("a result stream ended for a call that asked for none")}

  @doc false
  # A message from the caller's process.
  @spec from_caller(map(), t(), pos_integer(), term()) :: {t(), Objects.t()}
  def from_caller(state, %{result: %{} = r} = streams, id, {:ack, seq}) when is_integer(seq) do
    Interpreter.send_frame(state, Control.frame({:ack, id, 0, seq}))
    {%{streams | result: %{r | acked: max(r.acked, seq)}}, state.objects}
  end

  def from_caller(state, %{result: %{cancelled: false} = r} = streams, id, :cancel) do
    Interpreter.send_frame(state, Control.frame({:cancel, id, 0}))
    {%{streams | result: %{r | cancelled: true}}, state.objects}
  end

  def from_caller(state, streams, _id, {:feed, frame, slices}) do
    case Objects.lend(state.objects, state.config.arena, slices) do
      {:ok, objects, announcements} ->
        Enum.each(announcements ++ [frame], &Interpreter.send_frame(state, &1))
        {streams, objects}

      {:error, _} ->
        # the caller gave the slices up: it is gone, and its DOWN ends the feed
        {streams, state.objects}
    end
  end

  def from_caller(state, streams, id, {:chunk_ack, sid, seq}) do
    case streams.chunks do
      %{^sid => c} ->
        Interpreter.send_frame(state, Control.frame({:ack, id, sid, seq}))
        chunks = Map.put(streams.chunks, sid, %{c | acked: max(c.acked, seq)})
        {%{streams | chunks: chunks}, state.objects}

      _ ->
        {streams, state.objects}
    end
  end

  def from_caller(state, streams, _id, {:send, frame}) do
    Interpreter.send_frame(state, frame)
    {streams, state.objects}
  end

  def from_caller(state, streams, _id, _other), do: {streams, state.objects}

  @doc false
  # The caller exited mid-call: the interpreter stops the result stream, the
  # handler's argument streams fail and the result's pieces are acknowledged, so
  # the call ends soon; its answer then goes nowhere.
  @spec caller_down(map(), t(), pos_integer()) :: t()
  def caller_down(state, streams, id) do
    {streams, _} = from_caller(state, streams, id, :cancel)

    for sid <- streams.feeds do
      Interpreter.send_frame(state, Control.frame({:abort, id, sid, "the caller exited"}))
    end

    # pieces of the result that nobody will read: the relay takes them (one
    # made later is told when it starts)
    if streams.relay, do: send(streams.relay, :orphaned)

    %{streams | feeds: [], orphaned: true}
  end

  defp broken(message), do: Relay.broken(message)
end
