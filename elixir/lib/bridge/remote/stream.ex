defmodule Bridge.Remote.Stream do
  @moduledoc false
  # Bridge.stream/3, wherever its pool runs (protocol/SPEC.md §15.4). On this
  # node it is Bridge.Stream.Session. On another, a relay process there (started
  # through :erpc) runs the stream as a local one and sends its elements here,
  # each packed for the wire on its own (Bridge.Remote.Wire: a stream compresses
  # chunk by chunk), never more than `window` ahead of what this side took:
  # every element taken gives the relay one credit back. The relay watches the
  # consumer (a consumer that dies, or stops early, stops the stream there, so
  # the generator's `finally` runs); the consumer watches the relay's node
  # (Bridge.Cluster) and fails with :node_down as a call does. Elements come
  # to an alias, dropped once the stream is closed.

  alias Bridge.{Error, Remote}
  alias Bridge.Remote.Wire
  alias Bridge.Stream.Session

  @start_wait 10_000

  @doc false
  @spec new(Bridge.function_ref(), list(), keyword()) :: Enumerable.t()
  def new(function_ref, args, opts) do
    Stream.resource(fn -> open(function_ref, args, opts) end, &next/1, &close/1)
  end

  defp open(function_ref, args, opts) do
    case Remote.route(opts) do
      :local -> {:local, Session.open(function_ref, args, opts)}
      {:remote, node} -> {:remote, open_remote(node, function_ref, args, opts)}
      {:error, error} -> raise error
    end
  end

  defp open_remote(node, function_ref, args, opts) do
    pool = Keyword.get(opts, :pool, Bridge)
    window = Keyword.get(opts, :window, 4)

    with {:ok, s} <- Remote.settings(opts, Bridge.Config.get(pool)),
         {:ok, packed, _bytes} <- Wire.pack(args, s.compress, Remote.speed(node)) do
      key = :erlang.alias()
      remote_opts = Keyword.put(s.opts, :node, node)
      relay_args = [self(), key, function_ref, packed, remote_opts, {s.compress, window}]

      case start_relay(node, relay_args) do
        {:ok, relay} ->
          monitor = Process.monitor(relay)
          # the relay opens the stream only now: one this side gave up on never does
          send(relay, {:bb_go, key})
          %{node: node, relay: relay, monitor: monitor, key: key, settings: s}

        {:error, error} ->
          :erlang.unalias(key)
          flush(key)
          raise error
      end
    else
      {:error, %Error{} = error} -> raise error
    end
  end

  defp start_relay(node, args) do
    {:ok, :erpc.call(node, __MODULE__, :relay_start, args, @start_wait)}
  catch
    :error, {:erpc, :noconnection} ->
      {:error, Remote.node_down(node, :noconnection, @start_wait)}

    :error, {:erpc, :timeout} ->
      {:error, Remote.node_down(node, :silent, @start_wait)}

    class, reason ->
      {:error,
       Error.new(:bad_call, :no_pool,
         field: :node,
         value: node,
         message:
           "bad call: no_pool: #{node} could not start the stream " <>
             "(#{inspect({class, reason}, limit: 5)}); does it run this beambridge?"
       )}
  end

  defp next({:local, session}) do
    case Session.next(session) do
      {:halt, session} -> {:halt, {:local, session}}
      {elements, session} -> {elements, {:local, session}}
    end
  end

  defp next({:remote, %{relay: nil}} = state), do: {:halt, state}

  defp next({:remote, r} = state) do
    deadline = deadline(r.settings.timeout)

    case await(r, deadline) do
      {:element, packed} ->
        send(r.relay, {:bb_credit, r.key})

        case Remote.unpack(packed, r.settings.compress) do
          {:ok, value} -> {[value], state}
          {:error, error} -> fail(state, error)
        end

      :done ->
        {:halt, {:remote, finished(r)}}

      {:error, error} ->
        # the relay is told to stop (it may still run: a timeout, a silent node)
        fail({:remote, r}, error)
    end
  end

  defp await(r, deadline) do
    key = r.key
    monitor = r.monitor
    left = if deadline == :infinity, do: 50, else: deadline - now()

    receive do
      {:bb_stream, ^key, message} ->
        message

      {:DOWN, ^monitor, :process, _, :noconnection} ->
        {:error, Remote.node_down(r.node, :noconnection, r.settings.node_timeout)}

      {:DOWN, ^monitor, :process, _, reason} ->
        {:error,
         Error.new(:worker_died, :relay_died,
           message: "worker died: the stream's relay on #{r.node} exited: #{inspect(reason)}"
         )}
    after
      max(min(left, 50), 0) ->
        cond do
          left <= 0 ->
            {:error, Error.new(:timeout, :timeout, field: :timeout, value: r.settings.timeout)}

          not Bridge.Cluster.answering?(r.node, r.settings.node_timeout) ->
            {:error, Remote.node_down(r.node, :silent, r.settings.node_timeout)}

          true ->
            await(r, deadline)
        end
    end
  end

  defp fail({:remote, r}, error) do
    close({:remote, r})
    raise error
  end

  # The stream is over here: its alias goes, with what came to it already.
  defp finished(r) do
    Process.demonitor(r.monitor, [:flush])
    :erlang.unalias(r.key)
    flush(r.key)
    %{r | relay: nil}
  end

  defp flush(key) do
    receive do
      {:bb_stream, ^key, _} -> flush(key)
    after
      0 -> :ok
    end
  end

  defp close({:local, session}), do: Session.close(session)
  defp close({:remote, %{relay: nil}}), do: :ok

  defp close({:remote, r}) do
    send(r.relay, {:bb_stop, r.key})
    finished(r)
    :ok
  end

  defp deadline(t) when t in [:infinity, nil], do: :infinity
  defp deadline(timeout), do: now() + Bridge.Call.wait(timeout)
  defp now, do: System.monotonic_time(:millisecond)

  ## The relay, on the pool's node

  @doc false
  # Started through :erpc on the pool's node; returns the relay's pid.
  @spec relay_start(pid(), reference(), Bridge.function_ref(), term(), keyword(), tuple()) ::
          pid()
  def relay_start(consumer, key, function_ref, packed, opts, {compress, window}) do
    spawn(fn ->
      monitor = Process.monitor(consumer)
      relay = %{consumer: consumer, key: key, monitor: monitor, compress: compress}

      # the consumer says go once it watches this process; a consumer that gave
      # up on the start never does, and nothing is opened for it
      receive do
        {:bb_go, ^key} -> start(relay, function_ref, packed, opts, window)
        {:DOWN, ^monitor, :process, _, _} -> :ok
      after
        @start_wait -> :ok
      end
    end)
  end

  defp start(relay, function_ref, packed, opts, window) do
    case Remote.unpack(packed, relay.compress) do
      {:ok, args} ->
        stream = Bridge.stream(function_ref, args, opts)
        reducer = fn element, _ -> {:suspend, element} end
        {:suspended, nil, cont} = Enumerable.reduce(stream, {:suspend, nil}, reducer)
        relay_loop(relay, cont, window)

      {:error, error} ->
        send(relay.key, {:bb_stream, relay.key, {:error, error}})
    end
  rescue
    # the stream could not start there (bad options, no pool): the consumer's error
    error in Error -> send(relay.key, {:bb_stream, relay.key, {:error, error}})
  end

  # `credit`: elements the consumer has room for.
  defp relay_loop(%{monitor: monitor} = relay, cont, 0) do
    receive do
      {:bb_credit, _} -> relay_loop(relay, cont, 1)
      {:bb_stop, _} -> halt(cont)
      {:DOWN, ^monitor, :process, _, _} -> halt(cont)
    end
  end

  defp relay_loop(%{monitor: monitor} = relay, cont, credit) do
    receive do
      {:bb_stop, _} -> halt(cont)
      {:DOWN, ^monitor, :process, _, _} -> halt(cont)
      {:bb_credit, _} -> relay_loop(relay, cont, credit + 1)
    after
      0 ->
        case step(cont) do
          {:element, element, cont} ->
            {:ok, packed, _} =
              Wire.pack(element, relay.compress, Remote.speed(node(relay.consumer)))

            send(relay.key, {:bb_stream, relay.key, {:element, packed}})
            relay_loop(relay, cont, credit - 1)

          other ->
            send(relay.key, {:bb_stream, relay.key, other})
        end
    end
  end

  defp step(cont) do
    case cont.({:cont, nil}) do
      {:suspended, element, cont} -> {:element, element, cont}
      {:done, _} -> :done
      {:halted, _} -> :done
    end
  rescue
    error in Error -> {:error, error}
  end

  defp halt(cont) do
    cont.({:halt, nil})
    :ok
  rescue
    _ -> :ok
  end
end
