defmodule Bridge.Test.Peers do
  @moduledoc false
  # Real peer nodes on localhost (OTP's :peer) for the multi-node tests: this
  # node made distributed, peers started with this node's code path, the
  # beambridge application started on them, pools started there under the
  # application's supervisor (so they outlive the :erpc call that starts them).

  @doc false
  # Makes this node distributed (epmd started if needed). Returns a function
  # that undoes it. global's partition prevention (OTP 25) is off here and on
  # the peers: when a test kills a node, global would otherwise disconnect
  # healthy nodes that saw the death a moment later than this one.
  def distribute! do
    Application.put_env(:kernel, :prevent_overlapping_partitions, false)

    if Node.alive?() do
      fn -> :ok end
    else
      {_, 0} = System.cmd("epmd", ["-daemon"])
      name = :"bbt_origin_#{System.unique_integer([:positive])}@127.0.0.1"
      {:ok, _} = :net_kernel.start([name, :longnames])
      fn -> :net_kernel.stop() end
    end
  end

  @doc false
  # A peer node running beambridge: {peer, node}. Stopped with stop/1.
  def start!(name) do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    kernel = [~c"-kernel", ~c"prevent_overlapping_partitions", ~c"false"]

    {:ok, peer, node} =
      :peer.start(%{
        name: :"#{name}_#{System.unique_integer([:positive])}",
        host: ~c"127.0.0.1",
        longnames: true,
        args: kernel ++ paths,
        wait_boot: 30_000
      })

    {:ok, _} = :erpc.call(node, :application, :ensure_all_started, [:beambridge])
    {peer, node}
  end

  @doc false
  def stop(peer) do
    :peer.stop(peer)
  catch
    :exit, _ -> :ok
  end

  @doc false
  # On the peer (through :erpc): a bridge with `opts` under the application's
  # supervisor.
  def start_pool(opts) do
    spec = Supervisor.child_spec({Bridge, opts}, id: {Bridge, Keyword.fetch!(opts, :name)})

    case Supervisor.start_child(Bridge.Supervisor, spec) do
      {:ok, pid} -> {:ok, pid}
      other -> other
    end
  end

  @doc false
  def stop_pool(name) do
    _ = Supervisor.terminate_child(Bridge.Supervisor, {Bridge, name})
    Supervisor.delete_child(Bridge.Supervisor, {Bridge, name})
  end

  @doc false
  # On a node: how many stream relays (Bridge.Remote.Stream) run there.
  def relays do
    Enum.count(Process.list(), fn pid ->
      match?({:initial_call, {Bridge.Remote.Stream, _, _}}, Process.info(pid, :initial_call))
    end)
  end

  @doc false
  # The OS pid of `node`'s VM.
  def os_pid(node), do: :erpc.call(node, System, :pid, []) |> String.to_integer()

  @doc false
  # Waits until `fun` returns true (every 20 ms, at most `ms`).
  def until(fun, ms \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + ms
    wait(fun, deadline)
  end

  defp wait(fun, deadline) do
    cond do
      fun.() -> true
      System.monotonic_time(:millisecond) > deadline -> false
      true -> Process.sleep(20) && wait(fun, deadline)
    end
  end
end
