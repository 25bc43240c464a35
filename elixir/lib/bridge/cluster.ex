defmodule Bridge.Cluster do
  @moduledoc """
  The bridge's view of other nodes (protocol/SPEC.md §15): which nodes run a
  pool of a given name, and which of them answer.

  Membership is distributed Erlang's own: every pool joins the `:pg` group
  `{Bridge, name}` of the scope `:beambridge`, so a pool that stops, or a node
  that disconnects, leaves the group without anything here doing it. Liveness
  is this module's process: every 200 ms it sends each connected node's
  `Bridge.Cluster` a ping and notes when that node last answered, pinged it, or
  sent anything at all over its connection (a node busy sending a large value
  here answers no ping while its connection is full, and is alive). A node that
  stopped answering — hung, suspended, its network gone while the connection
  still looks open — is *silent*: routing skips it and calls waiting on it fail
  with `:node_down` once it has been silent for their `:node_timeout`, long
  before distribution's own tick (`net_ticktime`, 60 s by default) would
  notice. When it answers again it is used again.

  ## Examples

      iex> Bridge.Cluster.nodes(:no_such_pool)
      []
  """

  use GenServer

  @scope :beambridge
  @ping_every 200
  @table __MODULE__

  @doc false
  # What the application starts: the :pg scope and this process.
  @spec children() :: [Supervisor.child_spec()]
  def children do
    [%{id: :pg_beambridge, start: {:pg, :start_link, [@scope]}}, __MODULE__]
  end

  @doc false
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(_opts \\ []), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # The pool process `pid` of the bridge `name` joins its group.
  @spec join(atom(), pid()) :: :ok
  def join(name, pid) do
    :pg.join(@scope, {Bridge, name}, pid)
  catch
    # the application's scope is not running (the pool still works locally)
    :exit, _ -> :ok
  end

  @doc """
  The other nodes that run a pool named `name`, sorted; silent ones included.
  """
  @spec nodes(atom()) :: [node()]
  def nodes(name) do
    me = node()

    for(pid <- members(name), node(pid) != me, do: node(pid))
    |> Enum.uniq()
    |> Enum.sort()
  end

  @doc """
  Whether `node` runs a pool named `name` (this node included).
  """
  @spec runs?(node(), atom()) :: boolean()
  def runs?(node, name), do: Enum.any?(members(name), &(node(&1) == node))

  @doc """
  A node other than this one to send a call for the pool `name` to, skipping
  `exclude` and nodes silent for more than `bound` ms; `nil` when there is none.
  Nodes are chosen at random, so callers spread over them.
  """
  @spec pick(atom(), [node()], pos_integer()) :: node() | nil
  def pick(name, exclude, bound) do
    case Enum.filter(nodes(name) -- exclude, &answering?(&1, bound)) do
      [] -> nil
      candidates -> Enum.random(candidates)
    end
  end

  @doc """
  Whether `node` answered a ping within the last `bound` ms. This node always
  has; a node this process has not pinged yet counts from when it connected.
  """
  @spec answering?(node(), pos_integer()) :: boolean()
  def answering?(node, bound) do
    cond do
      node == node() ->
        true

      not Enum.member?(Node.list(), node) ->
        false

      true ->
        seen?(node, bound)
    end
  end

  defp seen?(node, bound) do
    case :ets.lookup(@table, node) do
      [{^node, seen}] -> now() - seen <= bound
      [] -> true
    end
  catch
    # this process is restarting: no news is not bad news
    :error, :badarg -> true
  end

  defp members(name) do
    :pg.get_members(@scope, {Bridge, name})
  catch
    # the application (and with it the scope) is not running
    :error, :badarg -> []
  end

  @impl true
  def init(nil) do
    :ets.new(@table, [:named_table, :public, read_concurrency: true])
    send(self(), :ping)
    {:ok, %{monitoring: false, received: %{}}}
  end

  @impl true
  def handle_info(:ping, state) do
    state = state |> monitor() |> traffic()

    for n <- Node.list() do
      # never suspended by a busy connection, never opens one
      :erlang.send({__MODULE__, n}, {:ping, self()}, [:noconnect, :nosuspend])
    end

    Process.send_after(self(), :ping, @ping_every)
    {:noreply, state}
  end

  def handle_info({:ping, from}, state) do
    :ets.insert(@table, {node(from), now()})
    :erlang.send(from, {:pong, node()}, [:noconnect, :nosuspend])
    {:noreply, state}
  end

  def handle_info({:pong, n}, state) do
    :ets.insert(@table, {n, now()})
    {:noreply, state}
  end

  def handle_info({:nodeup, n}, state) do
    :ets.insert(@table, {n, now()})
    {:noreply, state}
  end

  def handle_info({:nodedown, n}, state) do
    :ets.delete(@table, n)
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  # Bytes received on each node's distribution connection since the last tick:
  # any is a sign of life.
  defp traffic(state) do
    received =
      for {n, port} <- :erlang.system_info(:dist_ctrl), is_port(port), into: %{} do
        bytes =
          case :inet.getstat(port, [:recv_oct]) do
            {:ok, [recv_oct: b]} -> b
            _ -> 0
          end

        # a new connection (another port) starts its count afresh
        if bytes > Map.get(state.received, {n, port}, bytes), do: :ets.insert(@table, {n, now()})
        {{n, port}, bytes}
      end

    %{state | received: received}
  end

  # Node events, once this node is distributed (it may become so after start:
  # net_kernel ignores the request until then).
  defp monitor(%{monitoring: true} = state), do: state

  defp monitor(state) do
    if Node.alive?() and :net_kernel.monitor_nodes(true) == :ok do
      for n <- Node.list(), do: :ets.insert_new(@table, {n, now()})
      %{state | monitoring: true}
    else
      state
    end
  end

  defp now, do: System.monotonic_time(:millisecond)
end
