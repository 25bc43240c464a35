defmodule Bridge.Stream.Session do
  @moduledoc false
  # The caller's side of a call (protocol/SPEC.md §8.6), in the caller's
  # process: it sends the request to the pool as a GenServer call whose reply
  # it waits for itself (through an alias, so nothing of a call it gave up on
  # reaches it later), meanwhile feeding argument streams (Bridge.Stream.Feeds),
  # taking the pieces of a long result list (Bridge.Call.Pieces) and, for
  # Bridge.stream/3, the result stream's elements (Bridge.Worker.Streams sends
  # them, in order, before the reply).
  #
  # A result stream is a Stream.resource/3: open/3 starts it, next/1 gives
  # one element at a time (decoded here, payload checksums verified, the
  # running checksum and the checkpoint kept, then acknowledged so the worker
  # may send one more), close/1 stops it early: the worker is told to cancel,
  # and its end is awaited so the generator's `finally` has run and the worker
  # is free when the stream returns. A worker that dies mid-stream raises
  # %Bridge.Error{kind: :worker_died, checkpoint: checkpoint}, or with
  # `resume: :auto` starts the stream again after the checkpoint.

  alias Bridge.{Arena, Call, CallerGC, Error}
  alias Bridge.Call.{Callbacks, Pieces}
  alias Bridge.Stream.{Checkpoint, Feeds}

  # The consumer collects its garbage once the elements it took over the
  # worker's shared memory since the last time reach twice a window of the
  # largest (between 4 and 64 MiB), so dropped elements return their slices
  # and the worker's arenas stay a few windows large.
  @gc_min 4 * 1024 * 1024
  @gc_max 64 * 1024 * 1024
  # How long close/1 waits for a cancelled stream to end.
  @stop_wait 10_000
  @resume_limit "a %Bridge.Stream.Checkpoint{}, a checkpoint token (a binary), :auto or nil"

  defstruct [
    :key,
    :prepared,
    :id,
    :tag,
    :worker,
    :reply,
    :window,
    :resume,
    feeds: %{},
    pieces: %Pieces{},
    queue: :queue.new(),
    taken: 0,
    chain: 0,
    checkpoint: %Checkpoint{},
    resumes: 0,
    max_resumes: 3,
    leased: 0,
    largest: 0,
    stream?: false,
    cancelled?: false,
    # Bridge.Stream.Events' span of a result stream, nil once it ended
    span: nil
  ]

  ## Bridge.call/3

  # A call without argument streams waits in await/3, whose every message
  # names the call's alias: the VM then looks only at messages that came after
  # the request, however long the caller's mailbox.
  #
  # `timed?`: an answer that came is returned as {:timed, result, decoded_from,
  # timing}, with the native time its decoding began and the worker's timing
  # (Bridge.Worker.Replies.timing/0), for Bridge.Call.Timed.
  @doc false
  @spec call(map(), boolean()) ::
          {:ok, term()}
          | {:error, Error.t()}
          | {:timed, {:ok, term()} | {:error, Error.t()}, integer(), tuple()}
  def call(prepared, timed? \\ false)

  def call(%{streams: []} = prepared, timed?) do
    with {:ok, request} <- Call.build_request(prepared, %{}),
         {:ok, pool} <- pool(prepared) do
      tag = :erlang.monitor(:process, pool, alias: :demonitor)
      send(pool, {:"$gen_call", {self(), [:alias | tag]}, {:call, request, prepared.timeout}})

      try do
        {reply, pieces} = await(tag, %Pieces{}, prepared)
        answer(reply, pieces, %{}, prepared, timed?)
      after
        Pieces.finish()
        Callbacks.finish(tag)
      end
    end
  end

  def call(prepared, timed?) do
    session = %__MODULE__{prepared: prepared, feeds: Feeds.new(prepared.streams)}

    case send_request(session, %{}) do
      {:ok, session} ->
        try do
          session = await_reply(session)
          Feeds.close(session.feeds)
          answer(session.reply, session.pieces, session.feeds, prepared, timed?)
        after
          Pieces.finish()
          Callbacks.finish(session.tag)
        end

      error ->
        error
    end
  end

  defp await(tag, pieces, prepared) do
    receive do
      {[:alias | ^tag], reply} ->
        Process.demonitor(tag, [:flush])
        {reply, pieces}

      {:bridge_piece, ^tag, worker, id, piece} ->
        await(tag, Pieces.take(pieces, worker, id, piece, prepared.config), prepared)

      {:bridge_callback, ^tag, worker, key, fun, body, resolved} ->
        Callbacks.run(worker, key, fun, body, resolved, prepared, tag)
        await(tag, pieces, prepared)

      {:DOWN, ^tag, :process, _, reason} ->
        flush(tag)
        {{:error, Call.exit_error({reason, nil}, prepared)}, pieces}
    after
      Call.wait(prepared.timeout) ->
        Process.demonitor(tag, [:flush])
        flush(tag)
        {{:error, Call.exit_error({:timeout, nil}, prepared)}, pieces}
    end
  end

  # What came for a call given up on before its alias went: dropped.
  defp flush(tag) do
    receive do
      {[:alias | ^tag], _} -> flush(tag)
      {:bridge_piece, ^tag, _, _, _} -> flush(tag)
      {:bridge_callback, ^tag, _, _, _, _, _} -> flush(tag)
    after
      0 -> :ok
    end
  end

  defp answer(reply, pieces, feeds, prepared, timed?) do
    case {reply, Pieces.failure(pieces)} do
      {{:ok, {body, resolved, worker, timing}}, nil} ->
        CallerGC.received(resolved)

        if timed? do
          t0 = System.monotonic_time()

          {:timed,
           Call.decode(body, resolved, worker, prepared.config, pieces, prepared[:session]), t0,
           timing}
        else
          Call.decode(body, resolved, worker, prepared.config, pieces, prepared[:session])
        end

      {_reply, %Error{} = error} ->
        {:error, error}

      {{:error, error}, nil} ->
        # a stream that failed as the call's answer (Feeds.failure/1): the
        # worker's answer was that it ended early
        {:error, Feeds.failure(feeds) || error}
    end
  end

  defp await_reply(%{reply: nil} = session), do: session |> step() |> await_reply()
  defp await_reply(session), do: session

  ## Bridge.stream/3

  @doc false
  # Starts the stream (Stream.resource/3's start): raises Bridge.Error when
  # the call cannot be made.
  @spec open(Bridge.function_ref(), list(), keyword()) :: %__MODULE__{}
  def open(function_ref, args, opts) do
    {stream_opts, call_opts} = Keyword.split(opts, [:window, :resume, :max_resumes])

    with {:ok, window} <-
           option(stream_opts, :window, 4, &window?/1, "an integer from 1 to 1024"),
         {:ok, max} <- option(stream_opts, :max_resumes, 3, &count?/1, "a non-negative integer"),
         {:ok, resume} <- option(stream_opts, :resume, nil, &resume?/1, @resume_limit),
         {:ok, prepared} <- Call.prepare(function_ref, args, call_opts) do
      session = %__MODULE__{
        key: make_ref(),
        prepared: prepared,
        window: window,
        max_resumes: max,
        resume: resume,
        stream?: true,
        checkpoint: start_point(resume),
        span: Bridge.Stream.Events.start(prepared)
      }

      session = %{session | taken: session.checkpoint.taken, chain: session.checkpoint.checksum}

      case start_stream(session) do
        {:ok, session} ->
          session

        {:error, error} ->
          Enum.each(prepared.slices, &Arena.release/1)
          Bridge.Stream.Events.stop(session.span, error)
          raise error
      end
    else
      {:error, error} -> raise error
    end
  end

  defp window?(w), do: is_integer(w) and w in 1..Bridge.Stream.max_window()
  defp count?(n), do: is_integer(n) and n >= 0
  defp resume?(r), do: r in [nil, :auto] or is_binary(r) or is_struct(r, Checkpoint)

  defp option(opts, key, default, valid?, limit) do
    value = Keyword.get(opts, key, default)

    if valid?.(value),
      do: {:ok, value},
      else: {:error, Error.new(:bad_call, :badarg, field: key, value: value, limit: limit)}
  end

  # A token alone resumes after it, counting afresh.
  defp start_point(token) when is_binary(token), do: %Checkpoint{token: token}
  defp start_point(%Checkpoint{} = checkpoint), do: checkpoint
  defp start_point(_none), do: %Checkpoint{}

  defp start_stream(session) do
    p = session.prepared
    point = if session.checkpoint == %Checkpoint{}, do: nil, else: session.checkpoint
    option = %{"stream" => Checkpoint.option(point, session.window)}
    extra = %{stream: %{window: session.window, timeout: p.timeout, start: session.taken}}

    session = %{session | feeds: Feeds.new(p.streams), queue: :queue.new(), reply: nil}
    send_request(session, extra, option)
  end

  @doc false
  # Stream.resource/3's next: one element, or the end.
  @spec next(%__MODULE__{}) :: {[term()], %__MODULE__{}} | {:halt, %__MODULE__{}}
  def next(session) do
    case :queue.out(session.queue) do
      {{:value, element}, queue} -> deliver(%{session | queue: queue}, element)
      {:empty, _} when session.reply != nil -> the_end(session)
      {:empty, _} -> session |> step() |> next()
    end
  end

  defp deliver(session, {seq, point, body, resolved, worker}) do
    p = session.prepared
    chain = Bridge.Stream.chain(session.chain, seq, body)

    case Call.decode(body, resolved, worker, %{p.config | verify: true}, %{}, p[:session]) do
      {:ok, value} ->
        GenServer.cast(worker, {:stream, session.id, {:ack, seq}})
        checkpoint = Checkpoint.took(session.checkpoint, seq, point, chain)
        bytes = byte_size(body) + leased_bytes(resolved)
        in_flight = :queue.len(session.queue)
        span = Bridge.Stream.Events.element(session.span, bytes, in_flight, session.window)
        session = %{session | taken: seq, chain: chain, checkpoint: checkpoint, span: span}
        {[value], collect(session, resolved)}

      {:error, error} ->
        fail(session, error)
    end
  end

  # Ends the stream and raises: Stream.resource/3 then calls close/1 with the
  # state it last saw, which must do nothing more.
  defp fail(session, error) do
    session = %{session | span: Bridge.Stream.Events.stop(session.span, error)}
    close(session)
    Process.put({__MODULE__, session.key}, :closed)
    raise %{error | checkpoint: session.checkpoint}
  end

  # Elements over shared memory stay until this process collects: count them.
  defp collect(session, resolved) do
    bytes = leased_bytes(resolved)

    leased = session.leased + bytes
    largest = max(session.largest, bytes)

    if leased >= min(max(2 * session.window * largest, @gc_min), @gc_max) do
      :erlang.garbage_collect()
      %{session | leased: 0, largest: largest}
    else
      %{session | leased: leased, largest: largest}
    end
  end

  defp leased_bytes(resolved),
    do: for({:lease, _, length, _} <- Tuple.to_list(resolved), reduce: 0, do: (n -> n + length))

  defp the_end(%{reply: {:ok, {:stream_done, count, checksum}}} = session) do
    if {count, checksum} == {session.taken, session.chain} do
      {:halt, %{finished(session) | span: Bridge.Stream.Events.stop(session.span, :ok)}}
    else
      error =
        Error.new(:bad_frame, :stream_broken,
          field: :checksum,
          value: {count, checksum},
          limit: {session.taken, session.chain},
          message:
            "bad frame: stream_broken: the worker sent #{count} elements with checksum " <>
              "#{checksum}; #{session.taken} arrived with checksum #{session.chain}"
        )

      fail(session, error)
    end
  end

  defp the_end(%{reply: {:error, %Error{kind: :worker_died} = error}} = session) do
    if session.resume == :auto and session.resumes < session.max_resumes and
         session.prepared.streams == [] do
      case start_stream(%{session | resumes: session.resumes + 1}) do
        {:ok, session} -> next(session)
        {:error, error} -> fail(session, error)
      end
    else
      fail(session, error)
    end
  end

  # a feed that failed as the call's answer (pieces of a long list) says why
  defp the_end(%{reply: {:error, error}} = session),
    do: fail(session, Feeds.failure(session.feeds) || error)

  defp finished(session) do
    Feeds.close(session.feeds)
    Callbacks.finish(session.tag)
    %{session | feeds: %{}}
  end

  @doc false
  # Stream.resource/3's after: a stream stopped before its end is cancelled,
  # and its end awaited (the generator's `finally` has run when this returns).
  @spec close(%__MODULE__{}) :: :ok
  def close(session) do
    if Process.delete({__MODULE__, session.key}) != :closed do
      Bridge.Stream.Events.stop(session.span, :cancelled)
      session = if session.reply == nil, do: stop(session), else: session
      finished(session)
      Enum.each(session.prepared.slices, &Arena.release/1)
    end

    :ok
  end

  defp stop(%{reply: nil} = session) do
    if session.worker, do: GenServer.cast(session.worker, {:stream, session.id, :cancel})
    deadline = System.monotonic_time(:millisecond) + @stop_wait
    drain(%{session | cancelled?: true}, deadline)
  end

  defp stop(session), do: session

  defp drain(%{reply: nil} = session, deadline) do
    left = deadline - System.monotonic_time(:millisecond)

    if left > 0 do
      session = step(session, left)
      drain(%{session | queue: :queue.new()}, deadline)
    else
      session
    end
  end

  defp drain(session, _deadline), do: session

  ## The request and its messages

  defp send_request(session, extra, option \\ %{}) do
    p = session.prepared
    extra = Map.put(extra, :feeds, Enum.map(p.streams, &elem(&1, 0)))

    with {:ok, request} <- Call.build_request(p, extra, option),
         {:ok, pool} <- pool(p) do
      tag = :erlang.monitor(:process, pool, alias: :demonitor)
      send(pool, {:"$gen_call", {self(), [:alias | tag]}, {:call, request, p.timeout}})
      {:ok, %{session | id: request.id, tag: tag, worker: nil}}
    end
  end

  defp pool(prepared) do
    case GenServer.whereis(prepared.pool) do
      pid when is_pid(pid) -> {:ok, pid}
      _ -> {:error, Call.exit_error(:noproc, prepared)}
    end
  end

  # Waits for one message of the call and takes it.
  defp step(session, timeout \\ nil) do
    %{tag: tag, id: id} = session
    timeout = timeout || Call.wait(session.prepared.timeout)

    receive do
      {[:alias | ^tag], reply} ->
        Process.demonitor(tag, [:flush])
        %{session | reply: reply}

      {:bridge_stream, worker, ^id, message} ->
        on_stream(session, worker, message)

      {:bridge_piece, ^tag, worker, id, piece} ->
        on_piece(session, worker, id, piece)

      {:bridge_callback, ^tag, worker, key, fun, body, resolved} ->
        Callbacks.run(worker, key, fun, body, resolved, session.prepared, tag)
        session

      {:DOWN, ^tag, :process, _, reason} ->
        flush(tag)
        %{session | reply: {:error, Call.exit_error({reason, nil}, session.prepared)}}
    after
      timeout ->
        # what comes for the call from now on is dropped
        Process.demonitor(tag, [:flush])
        flush(tag)
        error = Call.exit_error({:timeout, nil}, session.prepared)
        %{session | reply: {:error, error}}
    end
  end

  # A stream's result is its elements, never pieces: those of a broken worker are
  # acknowledged unread.
  defp on_piece(%{stream?: true} = session, worker, id, piece) do
    Pieces.drop(worker, id, piece)
    session
  end

  defp on_piece(session, worker, id, piece),
    do: %{
      session
      | pieces: Pieces.take(session.pieces, worker, id, piece, session.prepared.config)
    }

  defp on_stream(session, worker, :started) do
    session = %{session | worker: worker}
    %{session | feeds: Feeds.push(session.feeds, context(session))}
  end

  defp on_stream(session, _worker, {:ack, sid, seq}),
    do: %{session | feeds: Feeds.ack(session.feeds, sid, seq, context(session))}

  defp on_stream(%{cancelled?: true} = session, _worker, {:element, _, _, _, _}), do: session

  defp on_stream(session, worker, {:element, seq, point, body, resolved}),
    do: %{session | queue: :queue.in({seq, point, body, resolved, worker}, session.queue)}

  # An element's slices could not be read: the worker is replaced, and the
  # reply that follows says so.
  defp on_stream(session, _worker, {:error, _error}), do: session

  defp context(session) do
    p = session.prepared
    %{worker: session.worker, id: session.id, config: p.config, format: p.format}
  end
end
