defmodule Bridge.Handle do
  @moduledoc """
  A call's result kept on the node that ran it (protocol/SPEC.md §15.5).

  `Bridge.call(fun, args, node: n, result: :handle)` leaves the result where
  the call ran, its large binaries still the zero-copy views of that node's
  shared memory they were decoded as, and returns a `%Bridge.Handle{}`: a node
  name and an id, a few bytes wherever it goes. Passed as an argument (at any
  depth) to another call, a handle stands for its value:

    * on the handle's node, the call reads the value there: nothing crosses a
      connection;
    * on another node, that node fetches the value from the handle's node
      itself (once, compressed as `:auto` decides): it never goes through the
      caller.

  `fetch/1` brings the value to the caller; `release/1` lets it go. A value is
  also let go when the process that made the call (its *owner*) exits, or its
  node disconnects: a handle does not outlive its owner. Until then it keeps
  the worker's slices it was read from (`Bridge.workers/1`, `held_slices`).

  A handle that was let go is a `:bad_call` error, reason `:released_handle`,
  wherever it is used.

  ## Examples

      iex> handle = Bridge.Handle.hold(%{"weights" => <<1, 2, 3>>}, self())
      iex> Bridge.Handle.fetch(handle)
      {:ok, %{"weights" => <<1, 2, 3>>}}
      iex> Bridge.Handle.release(handle)
      :ok
      iex> {:error, e} = Bridge.Handle.fetch(handle)
      iex> {e.kind, e.reason}
      {:bad_call, :released_handle}
  """

  use GenServer

  alias Bridge.Error

  @enforce_keys [:node, :id]
  defstruct [:node, :id]

  @type t :: %__MODULE__{node: node(), id: reference()}

  @table __MODULE__
  @fetch_timeout 60_000
  # how long the tag of a request given up on is remembered (ms)
  @abandoned_for 600_000

  @doc false
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(_opts \\ []), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc """
  Keeps `value` on this node for `owner` (a pid, here or on another node) and
  returns its handle. `tag` names the request that made it, for `abandon/2`.
  """
  @spec hold(term(), pid(), term()) :: t()
  def hold(value, owner, tag \\ nil) when is_pid(owner) do
    # a reference: unique across restarts of the node, unlike a counter
    id = make_ref()
    :ets.insert(@table, {id, value, owner, tag})

    # a request its caller gave up on keeps nothing (abandon/2 may come first)
    if tag != nil and :ets.member(@table, {:abandoned, tag}),
      do: :ets.delete(@table, id),
      else: GenServer.cast(__MODULE__, {:watch, id, owner})

    %__MODULE__{node: node(), id: id}
  end

  @doc false
  # The caller of the request `tag` gave up on it (a timeout, a silent node):
  # what it kept on `node`, or will keep, goes.
  @spec abandon(node(), term()) :: :ok
  def abandon(node, tag) do
    # sent from a process of its own: it may wait for the connection to come back
    spawn(fn -> send({__MODULE__, node}, {:"$gen_cast", {:abandon, tag}}) end)
    :ok
  end

  @doc """
  The value of `handle`, brought to this node if it is kept on another.
  Options: `:compress` (how it travels, default `:auto`), `:timeout` (ms the
  handle's node may take, default 60,000).
  """
  @spec fetch(t(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def fetch(handle, opts \\ [])

  # (a handle made before this node was distributed names :nonode@nohost)
  def fetch(%__MODULE__{node: node, id: id} = handle, _opts)
      when node == node() or node == :nonode@nohost do
    case :ets.lookup(@table, id) do
      [{^id, value, _owner, _tag}] -> {:ok, value}
      [] -> {:error, released(handle)}
    end
  catch
    :error, :badarg -> {:error, released(handle)}
  end

  def fetch(%__MODULE__{} = handle, opts) do
    with {:ok, compress} <- Bridge.Remote.compress(opts, nil) do
      fetch_from(handle, compress, Keyword.get(opts, :timeout, @fetch_timeout))
    end
  end

  defp fetch_from(%__MODULE__{node: node} = handle, compress, timeout) do
    case :erpc.call(node, __MODULE__, :packed, [handle, compress, node()], timeout) do
      {:ok, packed} -> Bridge.Remote.unpack(packed, compress)
      {:error, %Error{}} = error -> error
    end
  catch
    :error, {:erpc, :noconnection} ->
      {:error, Bridge.Remote.node_down(node, :noconnection, timeout)}

    :error, {:erpc, :timeout} ->
      {:error, Bridge.Remote.node_down(node, :silent, timeout)}

    _class, reason ->
      {:error,
       Error.new(:bad_call, :no_pool,
         field: :node,
         value: node,
         message:
           "bad call: no_pool: #{node} could not give the value of #{inspect(handle)} " <>
             "(#{inspect(reason, limit: 5)}); does it run beambridge?"
       )}
  end

  @doc false
  # On the handle's node, for fetch/2 on another: the value packed for the way.
  @spec packed(t(), atom(), node()) :: {:ok, term()} | {:error, Error.t()}
  def packed(handle, compress, to) do
    with {:ok, value} <- fetch(handle),
         {:ok, packed, _} <- Bridge.Remote.Wire.pack(value, compress, Bridge.Remote.speed(to)) do
      {:ok, packed}
    end
  end

  @doc "Lets the value of `handle` go (nothing happens if it was already)."
  @spec release(t()) :: :ok
  def release(%__MODULE__{node: node, id: id}) when node == node() or node == :nonode@nohost do
    # gone at once for whoever reads it next; the owner's watch ends after
    case :ets.take(@table, id) do
      [{^id, _value, owner, _tag}] -> GenServer.cast(__MODULE__, {:unwatch, id, owner})
      [] -> :ok
    end

    :ok
  end

  def release(%__MODULE__{node: node, id: id}) do
    # a node that is gone kept nothing
    :erlang.send({__MODULE__, node}, {:"$gen_cast", {:release, id}}, [:noconnect])
    :ok
  end

  @doc "How many values this node keeps for handles."
  @spec count() :: non_neg_integer()
  def count, do: :ets.select_count(@table, [{{:_, :_, :_, :_}, [], [true]}])

  defp released(handle) do
    Error.new(:bad_call, :released_handle,
      field: :handle,
      value: handle,
      message:
        "bad call: released_handle: the value of #{inspect(handle)} was let go " <>
          "(Bridge.Handle.release/1, or its owner exited)"
    )
  end

  @impl true
  def init(nil) do
    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    Process.send_after(self(), :expire, @abandoned_for)
    {:ok, %{owners: %{}, refs: %{}}}
  end

  # owners: pid => {monitor ref, ids}; refs: monitor ref => pid
  @impl true
  def handle_cast({:watch, id, owner}, state) do
    if :ets.member(@table, id) do
      {ref, ids} = Map.get_lazy(state.owners, owner, fn -> {Process.monitor(owner), []} end)

      {:noreply,
       %{
         state
         | owners: Map.put(state.owners, owner, {ref, [id | ids]}),
           refs: Map.put(state.refs, ref, owner)
       }}
    else
      {:noreply, state}
    end
  end

  def handle_cast({:release, id}, state), do: {:noreply, drop(id, state)}
  def handle_cast({:unwatch, id, owner}, state), do: {:noreply, unwatch(id, owner, state)}

  def handle_cast({:abandon, tag}, state) do
    :ets.insert(@table, {{:abandoned, tag}, now() + @abandoned_for})
    ids = :ets.select(@table, [{{:"$1", :_, :_, tag}, [], [:"$1"]}])
    {:noreply, Enum.reduce(ids, state, &drop/2)}
  end

  @impl true
  def handle_info({:DOWN, ref, :process, _, _}, state) do
    {owner, refs} = Map.pop(state.refs, ref)
    {{_ref, ids}, owners} = Map.pop(state.owners, owner, {ref, []})
    Enum.each(ids, &:ets.delete(@table, &1))
    {:noreply, %{state | owners: owners, refs: refs}}
  end

  def handle_info(:expire, state) do
    now = now()
    :ets.select_delete(@table, [{{{:abandoned, :_}, :"$1"}, [{:<, :"$1", now}], [true]}])
    Process.send_after(self(), :expire, @abandoned_for)
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  # A value let go: its row, and its owner's watch when it was the last.
  defp drop(id, state) do
    case :ets.take(@table, id) do
      [{^id, _value, owner, _tag}] -> unwatch(id, owner, state)
      [] -> state
    end
  end

  defp unwatch(id, owner, state) do
    case state.owners do
      %{^owner => {ref, [^id]}} ->
        Process.demonitor(ref, [:flush])
        %{state | owners: Map.delete(state.owners, owner), refs: Map.delete(state.refs, ref)}

      %{^owner => {ref, ids}} ->
        %{state | owners: Map.put(state.owners, owner, {ref, List.delete(ids, id)})}

      _ ->
        state
    end
  end

  defp now, do: System.monotonic_time(:millisecond)
end
