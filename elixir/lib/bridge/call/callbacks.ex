defmodule Bridge.Call.Callbacks do
  @moduledoc false
  # Callbacks into Elixir, in the caller's process (protocol/SPEC.md §8.8).
  # While a call waits for its answer (Bridge.Stream.Session), a callback of its
  # handler comes as {:bridge_callback, tag, worker, cid, {module, function},
  # body, resolved}, already checked against the pool's list by the worker
  # (Bridge.Worker.Callbacks). It runs here, in the process that made the call:
  # the arguments decoded as a result is (values over the worker's shared
  # memory read in place), the function applied, its result encoded as call
  # arguments are (into the bridge's arenas) and handed back to the worker.
  #
  # The slices of a result are this process's until the worker has lent them to
  # the interpreter: they are let go when the call's next callback comes (by
  # then the worker has handled the reply that names them, its messages being
  # in order) or when the call ends (finish/1), kept per call (its reply tag).
  # The arguments must be as many as the allowed entry's arity: the worker
  # checked its name, this the count.
  #
  # A call made from inside a callback to the pool whose worker waits for that
  # callback never waits in the pool's queue (nested?/1): with no idle worker it
  # fails at once (`:nested_call`) rather than wait, perhaps for itself.

  alias Bridge.{Arena, Call, Control, Encoder}

  @held {__MODULE__, :held}
  @nested {__MODULE__, :pools}

  @doc false
  # Runs callback `cid` of call `id` (a call this process waits for under
  # `tag`) and sends its reply to `worker`.
  @spec run(
          pid(),
          {pos_integer(), pos_integer()},
          {atom(), atom(), arity()},
          binary(),
          tuple(),
          map(),
          term()
        ) ::
          :ok
  def run(worker, {id, cid}, {module, function, arity}, body, resolved, prepared, tag) do
    release_held(tag)

    reply =
      case Call.decode(body, resolved, worker, prepared.config, %{}, prepared[:session]) do
        {:ok, args} when is_list(args) and length(args) == arity ->
          args |> invoke(module, function, prepared.pool) |> encode(prepared, tag)

        {:ok, _other} ->
          error(:bad_callback_value, "", "the arguments are not a list of #{arity}")

        {:error, error} ->
          error(:bad_callback_value, "", Exception.message(error))
      end

    GenServer.cast(worker, {:callback_reply, id, cid, reply})
  end

  @doc false
  # The call waited for under `tag` is over: the slices of its callbacks' results go.
  @spec finish(term()) :: :ok
  def finish(tag), do: release_held(tag)

  @doc false
  # Whether a call to `pool` is made from inside a callback of that pool.
  @spec nested?(atom()) :: boolean()
  def nested?(pool), do: pool in Process.get(@nested, [])

  defp invoke(args, module, function, pool) do
    pools = Process.get(@nested, [])
    Process.put(@nested, [pool | pools])

    try do
      {:ok, apply(module, function, args)}
    rescue
      e -> error(:callback_raised, inspect(e.__struct__), Exception.message(e))
    catch
      kind, reason -> error(:callback_raised, Atom.to_string(kind), inspect(reason, limit: 20))
    after
      Process.put(@nested, pools)
    end
  end

  defp encode({:ok, value}, prepared, tag) do
    config = prepared.config

    opts = [
      format: prepared.format,
      nested_records: Bridge.Config.peer_minor(config) >= 6,
      session: Map.get(prepared, :session)
    ]

    case Encoder.encode_call([value], config.arena, config.threshold, opts) do
      {:ok, term, slices, []} ->
        body = :erlang.term_to_binary(term)

        if byte_size(body) + 1_024 > Control.max_frame() do
          Enum.each(slices, &Arena.release/1)

          error(
            :bad_callback_value,
            "",
            "the result encodes to #{byte_size(body)} bytes inline, over the control frame limit"
          )
        else
          Process.put({@held, tag}, slices ++ Process.get({@held, tag}, []))
          {:ok, Encoder.entries(slices), body, slices}
        end

      {:ok, _term, slices, _streams} ->
        Enum.each(slices, &Arena.release/1)
        error(:bad_callback_value, "", "a callback cannot return a Bridge.Stream")

      {:error, error} ->
        error(:bad_callback_value, "", Exception.message(error))
    end
  end

  defp encode(error, _prepared, _tag), do: error

  # (the worker cuts a long message down as it sends it)
  defp error(reason, type, message), do: {:error, reason, type, message}

  defp release_held(tag) do
    case Process.delete({@held, tag}) do
      nil -> :ok
      slices -> Enum.each(slices, &Arena.release/1)
    end
  end
end
