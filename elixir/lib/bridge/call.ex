defmodule Bridge.Call do
  @moduledoc false
  # One Bridge.call/3, in the caller's process: the options checked, the
  # arguments encoded into the bridge's arenas (Bridge.Encoder), the request sent
  # through the pool to a worker, and the answer's body decoded here
  # (Bridge.Decoder). The request is sent, and its answer awaited, by
  # Bridge.Stream.Session, which also feeds argument streams and takes the pieces
  # of a long result (Bridge.Call.Pieces) meanwhile.

  alias Bridge.{Arena, CallerGC, Config, Control, Decoder, Encoder, Error, Metrics, Telemetry}
  alias Bridge.Call.Timed
  alias Bridge.Worker
  alias Bridge.Provenance.Arguments

  @call_margin 5_000

  @doc false
  @spec run(Bridge.function_ref(), list(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def run(function_ref, args, opts) do
    with :ok <- check_result(Keyword.get(opts, :result, :value)),
         {:ok, opts, session} <- Bridge.Session.options(opts) do
      case if(session, do: :session, else: Bridge.Remote.route(opts)) do
        # a session's calls run on its worker, here: no other node, no spill
        :session -> function_ref |> run_here(args, opts) |> kept(opts)
        :local -> run_local(function_ref, args, opts)
        {:remote, node} -> Bridge.Remote.call(node, function_ref, args, opts)
        {:error, _} = error -> error
      end
    end
  end

  defp check_result(r) when r in [:value, :handle], do: :ok

  defp check_result(r),
    do:
      {:error,
       Error.new(:bad_call, :badarg, field: :result, value: r, limit: ":value or :handle")}

  # result: :handle keeps the value here, for the caller (SPEC §15.5).
  defp kept({:ok, value}, opts) do
    if Keyword.get(opts, :result) == :handle,
      do: {:ok, Bridge.Handle.hold(value, self())},
      else: {:ok, value}
  end

  defp kept(error, _opts), do: error

  # A local pool that is overloaded hands the call to another node's pool of
  # the same name, when it allows (:spill) and one answers (SPEC §15).
  defp run_local(function_ref, args, opts) do
    case function_ref |> run_here(args, opts) |> kept(opts) do
      {:error, %Error{kind: :overloaded}} = overloaded ->
        case Bridge.Remote.spill(opts, Config.get(Keyword.get(opts, :pool, Bridge))) do
          nil -> overloaded
          node -> Bridge.Remote.call(node, function_ref, args, opts)
        end

      result ->
        result
    end
  end

  defp run_here(function_ref, args, opts) do
    cond do
      Telemetry.enabled?() ->
        Bridge.Call.Events.span(function_ref, opts, fn ->
          {result, timings, tallies} = Timed.run(function_ref, args, opts)
          {result, Metrics.measurements(timings, tallies)}
        end)

      Metrics.enabled?() ->
        function_ref |> Timed.run(args, opts) |> elem(0)

      true ->
        do_run(function_ref, args, opts)
    end
  end

  @doc false
  # The call: prepared, sent, its slices let go whatever happens.
  @spec do_run(Bridge.function_ref(), list(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def do_run(function_ref, args, opts) do
    with {:ok, prepared} <- prepare(function_ref, args, opts) do
      # The slices are this process's until the call is over, whatever happens.
      try do
        Bridge.Stream.Session.call(prepared)
      after
        Enum.each(prepared.slices, &Arena.release/1)
      end
    end
  end

  @doc false
  # Everything a call needs before it is sent, made in the caller: the options
  # checked, the arguments encoded (argument streams, SPEC §8.6, become
  # handles, returned in `streams`).
  @spec prepare(Bridge.function_ref(), list(), keyword()) :: {:ok, map()} | {:error, Error.t()}
  def prepare({module, function}, args, opts) when is_list(args) and is_list(opts) do
    with {:ok, opts, session} <- Bridge.Session.options(opts) do
      prepare(module, function, args, opts, session)
    end
  end

  def prepare(function_ref, args, _opts) do
    {:error,
     Error.new(:bad_call, :badarg,
       field: :call,
       value: {function_ref, args},
       message:
         "bad call: badarg: expected {module, function} and a list of arguments, got " <>
           "#{inspect(function_ref)} and #{inspect(args, limit: 5)}"
     )}
  end

  defp prepare(module, function, args, opts, session) do
    pool = Keyword.get(opts, :pool, Bridge)

    with :ok <- check_name(:module, module),
         :ok <- check_name(:function, function),
         {:ok, config} <- config(pool),
         :ok <- CallerGC.before_call(config.arena_limit),
         {:ok, timeout} <- timeout(opts, config.timeout),
         {:ok, format} <- Bridge.Format.check_policy(Keyword.get(opts, :format, :auto)),
         {:ok, strings} <- strings(Keyword.get(opts, :strings, config.strings)),
         {:ok, provenance} <- Arguments.context(Keyword.get(opts, :meta)),
         {:ok, compress} <- local_codec(opts, config),
         {:ok, term, slices, streams} <-
           encode(args, config, format, pool, {provenance, compress, session}) do
      {:ok,
       %{
         pool: pool,
         config: config,
         module: module,
         function: function,
         term: term,
         slices: slices,
         streams: streams,
         timeout: timeout,
         format: format,
         strings: strings,
         session: session,
         # held until the call is over: a %Bridge.Ref{} among them must not be
         # collected (and its object released) before the worker reads it
         args: args,
         opts:
           format
           |> call_opts(strings)
           |> with_meta(Arguments.option(provenance))
           |> with_codec(compress)
           |> with_session(session)
       }}
    end
  end

  # The call's options as the worker reads them (SPEC §8.3): only what differs
  # from the defaults, so most calls carry an empty map.
  defp call_opts(:auto, :bytes), do: %{}
  defp call_opts(format, :bytes), do: %{"format" => Atom.to_string(format)}
  defp call_opts(format, :str), do: Map.put(call_opts(format, :bytes), "strings", "str")

  defp with_meta(opts, nil), do: opts
  defp with_meta(opts, meta), do: Map.put(opts, "meta", meta)

  # The worker compresses its result slices with the call's codec (SPEC §15.3).
  # The call's session (SPEC §8.9): the worker keeps objects for it.
  defp with_session(opts, nil), do: opts
  defp with_session(opts, id), do: Map.put(opts, "session", id)

  defp with_codec(opts, nil), do: opts
  defp with_codec(opts, codec), do: Map.put(opts, "compress", Atom.to_string(codec))

  # Through shared memory :auto never compresses: its model (Bridge.Codec.Choice)
  # puts a codec ahead only when decompressing is faster than the path, and no
  # codec here decompresses faster than a memcpy. A codec asked for by name is
  # used with workers of protocol 2.7 or later (SPEC §5.3).
  defp local_codec(opts, config) do
    with {:ok, setting} <- Bridge.Remote.compress(opts, config) do
      codec = if setting == :auto, do: :none, else: Bridge.Codec.of_setting(setting)
      {:ok, if(codec != :none and Config.peer_minor(config) >= 7, do: codec)}
    end
  end

  defp strings(s) when s in [:bytes, :str], do: {:ok, s}

  defp strings(s) do
    {:error, Error.new(:bad_call, :badarg, field: :strings, value: s, limit: ":bytes or :str")}
  end

  @doc false
  # The request a worker runs (Bridge.Worker.run/4), with `extra` fields and
  # call options (`"stream"`); its id is new.
  @spec build_request(map(), map(), map()) :: {:ok, map()} | {:error, Error.t()}
  def build_request(prepared, extra, extra_opts \\ %{}) do
    body = :erlang.term_to_binary(prepared.term)
    id = :erlang.unique_integer([:positive])
    opts = Map.merge(prepared.opts, extra_opts)
    entries = Encoder.entries(prepared.slices)
    frame = Control.call_frame(id, prepared.module, prepared.function, opts, entries, body)

    request = %{
      id: id,
      frame: frame,
      slices: prepared.slices,
      module: prepared.module,
      function: prepared.function,
      # made from a callback of this pool: never waits in its queue (SPEC §8.8)
      nested: Bridge.Call.Callbacks.nested?(prepared.pool),
      session: Map.get(prepared, :session)
    }

    with :ok <- check_frame(frame), do: {:ok, Map.merge(request, extra)}
  end

  @doc false
  # What a call's exit (from the pool, or a wait on it) means to the caller.
  @spec exit_error(term(), map()) :: Error.t()
  def exit_error({:timeout, _}, prepared),
    do: Error.new(:timeout, :timeout, field: :timeout, value: prepared.timeout)

  def exit_error({reason, _}, prepared) when reason in [:noproc, :normal, :shutdown],
    do: no_pool(prepared.pool)

  def exit_error({reason, _}, prepared) do
    Error.new(:worker_died, :pool_died,
      message: "worker died: the pool #{inspect(prepared.pool)} exited: #{inspect(reason)}"
    )
  end

  def exit_error(reason, prepared), do: exit_error({reason, nil}, prepared)

  # A caller that read the config just before the bridge stopped finds its arenas
  # closed: the same error as a call made after the stop.
  defp encode(args, config, format, pool, {provenance, compress, session}) do
    opts = [
      format: format,
      streams: true,
      provenance: provenance,
      compress: compress,
      nested_records: Config.peer_minor(config) >= 6,
      session: session
    ]

    case Encoder.encode_call(args, config.arena, config.threshold, opts) do
      {:error, %Error{kind: :arena, reason: :closed}} -> {:error, no_pool(pool)}
      result -> result
    end
  end

  defp check_frame(frame) do
    size = IO.iodata_length(frame)

    if size <= Control.max_frame() do
      :ok
    else
      {:error,
       Error.new(:bad_call, :frame_too_large,
         field: :args,
         value: size,
         limit: Control.max_frame(),
         message:
           "bad call: frame_too_large: the call's inline part is #{size} bytes, over the " <>
             "control frame limit of #{Control.max_frame()}; lower :threshold so more values " <>
             "travel in shared memory (many small values add up), or raise :arena_limit"
       )}
    end
  end

  # The body is decoded here, in the caller. A body or slice that does not decode
  # is the worker's fault (it is replaced); a well-formed value that cannot be
  # rebuilt here (unknown atoms, custom types without a serializer) is the call's.
  # `pieces`: the lists that came in pieces before the answer.
  @doc false
  # `session`: the call's, the only one whose refs its result may hold.
  @spec decode(binary(), tuple(), pid(), Config.t(), Bridge.Call.Pieces.t(), pos_integer() | nil) ::
          {:ok, term()} | {:error, Error.t()}
  def decode(body, resolved, worker, config, pieces \\ %{}, session \\ nil) do
    with {:ok, term} <- Control.decode_body(body),
         {:ok, value} <-
           Decoder.decode_result(
             term,
             resolved,
             [worker: worker, session: session] ++ checks(config),
             pieces
           ) do
      {:ok, value}
    else
      {:error, %Error{kind: :bad_call}} = error ->
        error

      # a payload that does not decompress, or to more than the call may take,
      # is lost data, not a broken protocol: the call fails, the worker stays
      # (SPEC §15.3)
      {:error, %Error{reason: reason}} = error
      when reason in [:bad_compressed_data, :decoded_too_large] ->
        error

      {:error, error} ->
        Worker.bad_answer(worker, error)
        {:error, error}
    end
  end

  @doc false
  # What a result's slices are checked against: its payloads decompress to at
  # most the bytes the worker's arenas may hold (SPEC §15.3).
  @spec checks(Config.t()) :: keyword()
  def checks(config),
    do: [verify: config.verify, max_decoded: max(config.arena_limit, 67_108_864)]

  defp check_name(_field, name) when is_atom(name) and name not in [nil, true, false], do: :ok
  defp check_name(_field, name) when is_binary(name) and name != "", do: :ok

  defp check_name(field, name) do
    {:error,
     Error.new(:bad_call, :badarg, field: field, value: name, limit: "an atom or a binary")}
  end

  @doc false
  # The running pool's config, or :no_pool.
  @spec config(atom()) :: {:ok, Config.t()} | {:error, Error.t()}
  def config(pool) do
    case Config.get(pool) do
      %Config{} = config -> {:ok, config}
      nil -> {:error, no_pool(pool)}
    end
  end

  @doc false
  # The call's :timeout, `default` when it gives none; nil only when `default`
  # is (a caller that leaves it to another node's pool, Bridge.Remote).
  @spec timeout(keyword(), timeout() | nil) :: {:ok, timeout() | nil} | {:error, Error.t()}
  def timeout(opts, default) do
    case Keyword.get(opts, :timeout, default) do
      t when (is_integer(t) and t > 0) or t == :infinity or (t == nil and default == nil) ->
        {:ok, t}

      t ->
        {:error,
         Error.new(:bad_call, :badarg,
           field: :timeout,
           value: t,
           limit: "a positive integer (milliseconds) or :infinity"
         )}
    end
  end

  # The pool and the worker enforce the timeout; this margin only covers
  # encoding and reading large values after the worker's deadline fired.
  @doc false
  @spec wait(timeout()) :: timeout()
  def wait(:infinity), do: :infinity
  def wait(timeout), do: timeout + @call_margin

  defp no_pool(pool) do
    Error.new(:bad_call, :no_pool,
      field: :pool,
      value: pool,
      message: "bad call: no_pool: no bridge named #{inspect(pool)} is running"
    )
  end
end
