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
    pool = Keyword.get(opts, :pool, Bridge)

    with :ok <- check_name(:module, module),
         :ok <- check_name(:function, function),
         {:ok, config} <- config(pool),
         :ok <- CallerGC.before_call(config.arena_limit),
         {:ok, timeout} <- timeout(opts, config),
         {:ok, format} <- Bridge.Format.check_policy(Keyword.get(opts, :format, :auto)),
         {:ok, strings} <- strings(Keyword.get(opts, :strings, config.strings)),
         {:ok, provenance} <- Arguments.context(Keyword.get(opts, :meta)),
         {:ok, term, slices, streams} <- encode(args, config, format, pool, provenance) do
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
         opts: with_meta(call_opts(format, strings), Arguments.option(provenance))
       }}
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

  # The call's options as the worker reads them (SPEC §8.3): only what differs
  # from the defaults, so most calls carry an empty map.
  defp call_opts(:auto, :bytes), do: %{}
  defp call_opts(format, :bytes), do: %{"format" => Atom.to_string(format)}
  defp call_opts(format, :str), do: Map.put(call_opts(format, :bytes), "strings", "str")

  defp with_meta(opts, nil), do: opts
  defp with_meta(opts, meta), do: Map.put(opts, "meta", meta)

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
      function: prepared.function
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
  defp encode(args, config, format, pool, provenance) do
    opts = [
      format: format,
      streams: true,
      provenance: provenance,
      nested_records: Config.peer_minor(config) >= 6
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
  @spec decode(binary(), tuple(), pid(), Config.t(), Bridge.Call.Pieces.t()) ::
          {:ok, term()} | {:error, Error.t()}
  def decode(body, resolved, worker, config, pieces \\ %{}) do
    with {:ok, term} <- Control.decode_body(body),
         {:ok, value} <- Decoder.decode_result(term, resolved, config.verify, pieces) do
      {:ok, value}
    else
      {:error, %Error{kind: :bad_call}} = error ->
        error

      {:error, error} ->
        Worker.bad_answer(worker, error)
        {:error, error}
    end
  end

  defp check_name(_field, name) when is_atom(name) and name not in [nil, true, false], do: :ok
  defp check_name(_field, name) when is_binary(name) and name != "", do: :ok

  defp check_name(field, name) do
    {:error,
     Error.new(:bad_call, :badarg, field: field, value: name, limit: "an atom or a binary")}
  end

  defp config(pool) do
    case Config.get(pool) do
      %Config{} = config -> {:ok, config}
      nil -> {:error, no_pool(pool)}
    end
  end

  defp timeout(opts, config) do
    case Keyword.get(opts, :timeout, config.timeout) do
      t when (is_integer(t) and t > 0) or t == :infinity ->
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
