defmodule Bridge.Session do
  @moduledoc """
  One worker of a pool, checked out for a run of calls (protocol/SPEC.md §8.9).

  `Bridge.session/3` checks a worker out, gives the function a `%Bridge.Session{}` and
  checks the worker back in when the function returns, raises or its process exits.
  Every `Bridge.call/3` and `Bridge.stream/3` given `session: session` runs on that
  worker, one at a time in the order they come, so what a handler leaves in its module
  (a loaded model, a cache, a connection) is there for the next call. No other call of
  the pool runs on it meanwhile.

  A handler may return `beambridge.keep(obj)`: the object stays in the worker and
  Elixir gets a `Bridge.Ref`; passed back as an argument of a call of the same session
  the handler gets the object itself. A kept object goes when its ref is
  garbage-collected here or when the session ends, whichever comes first.

  If the worker's interpreter dies during a session (killed after a timeout that its
  handler did not stop within `:cancel_grace`, a crash), everything it kept is gone:
  the session's later calls fail with kind `:worker_died`, reason `:session_lost`.

  Sessions are local: a session's calls run on this node's pool, never spill to another
  node.
  """

  alias Bridge.Error

  @enforce_keys [:pool, :id, :worker, :owner]
  defstruct [:pool, :id, :worker, :owner]

  @type t :: %__MODULE__{pool: atom(), id: pos_integer(), worker: pid(), owner: pid()}

  @doc false
  # Bridge.session/3.
  @spec run(atom(), (t() -> result), keyword()) :: result | {:error, Error.t()}
        when result: term()
  def run(pool, fun, opts) when is_function(fun, 1) and is_list(opts) do
    with {:ok, config} <- Bridge.Call.config(pool),
         {:ok, timeout} <- Bridge.Call.timeout(opts, config.timeout),
         {:ok, session} <- checkout(pool, timeout) do
      try do
        fun.(session)
      after
        checkin(session)
      end
    end
  end

  def run(pool, fun, opts) do
    {:error,
     Error.new(:bad_call, :badarg,
       field: :session,
       value: {pool, fun, opts},
       limit: "a pool name, a function of one argument and options"
     )}
  end

  # From a callback of this pool (SPEC §8.8) a checkout that would wait fails at once.
  defp checkout(pool, timeout) do
    nested = Bridge.Call.Callbacks.nested?(pool)
    GenServer.call(pool, {:checkout, self(), timeout, nested}, Bridge.Call.wait(timeout))
  catch
    :exit, reason -> {:error, Bridge.Call.exit_error(reason, %{pool: pool, timeout: timeout})}
  end

  defp checkin(%__MODULE__{pool: pool, id: id}) do
    GenServer.call(pool, {:checkin, id})
  catch
    :exit, _ -> :ok
  end

  @doc false
  # A call's options with its session's pool: {:ok, opts, session id or nil}.
  @spec options(keyword()) :: {:ok, keyword(), pos_integer() | nil} | {:error, Error.t()}
  def options(opts) do
    case Keyword.get(opts, :session) do
      nil ->
        {:ok, opts, nil}

      %__MODULE__{pool: pool, id: id, worker: worker} ->
        if Keyword.get(opts, :pool, pool) == pool and Keyword.get(opts, :node, node()) == node() and
             node(worker) == node(),
           do: {:ok, Keyword.put(opts, :pool, pool), id},
           else: {:error, bad(opts[:session], "the session's own pool, on this node")}

      other ->
        {:error, bad(other, "a %Bridge.Session{} from Bridge.session/3")}
    end
  end

  defp bad(value, limit),
    do: Error.new(:bad_call, :badarg, field: :session, value: value, limit: limit)
end
