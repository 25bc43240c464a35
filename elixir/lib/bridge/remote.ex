defmodule Bridge.Remote do
  @moduledoc false
  # Calls that go to a pool on another node (protocol/SPEC.md §15). The caller
  # packs its arguments (Bridge.Remote.Wire: large binaries compressed as the
  # :compress setting says) and sends them with :erpc to serve/4 on that node,
  # which unpacks them and makes an ordinary local call there: the arguments
  # cross the distribution connection once and then go into that node's shared
  # memory, and the result comes back the same way. While it waits the caller
  # watches the node (Bridge.Cluster): a lost connection, or a node silent for
  # :node_timeout ms, fails the call with :node_down; with retry: n it goes to
  # another node instead, up to n times (only for calls declared idempotent:
  # the first node may have run it).
  #
  # Each call also measures the connection: its round trip less the time the
  # other node spent serving it is time on the wire, and the bytes it moved
  # over that time is what :auto weighs compression against (Bridge.Codec.Choice).

  import Bitwise

  alias Bridge.{Cluster, Config, Error}
  alias Bridge.Remote.Wire

  @default_node_timeout 5_000
  @poll 50
  @max_decoded 1 <<< 32
  @learn_min 1_048_576
  @first_speed 1.0e9

  @typedoc "Where a call goes."
  @type route :: :local | {:remote, node()} | {:error, Error.t()}

  @doc false
  # Where the call with `opts` goes: the local pool when there is one (or
  # `node:` names this node), else a node that runs the pool.
  @spec route(keyword()) :: route()
  def route(opts) do
    # a session's calls run on its worker, on this node (SPEC §8.9)
    if Keyword.has_key?(opts, :session), do: :local, else: route_pool(opts)
  end

  defp route_pool(opts) do
    pool = Keyword.get(opts, :pool, Bridge)

    with {:ok, node_timeout} <- node_timeout(opts, Config.get(pool)) do
      case Keyword.fetch(opts, :node) do
        {:ok, n} when n == node() ->
          :local

        {:ok, n} when is_atom(n) and n != nil ->
          if Cluster.runs?(n, pool), do: {:remote, n}, else: {:error, no_pool(pool, n)}

        {:ok, other} ->
          {:error,
           Error.new(:bad_call, :badarg, field: :node, value: other, limit: "a node name")}

        :error ->
          cond do
            Config.get(pool) != nil -> :local
            n = Cluster.pick(pool, [], node_timeout) -> {:remote, n}
            true -> :local
          end
      end
    end
  end

  @doc false
  # A node to spill an overloaded local call to, if the pool allows it.
  @spec spill(keyword(), Config.t() | nil) :: node() | nil
  def spill(opts, %Config{spill: true} = config) do
    if Keyword.has_key?(opts, :node) do
      nil
    else
      {:ok, bound} = node_timeout(opts, config)
      Cluster.pick(config.name, [], bound)
    end
  end

  def spill(_opts, _config), do: nil

  @doc false
  # The call `function_ref(args)` on `node`'s pool.
  @spec call(node(), Bridge.function_ref(), list(), keyword()) ::
          {:ok, term()} | {:error, Error.t()}
  def call(node, function_ref, args, opts) do
    config = Config.get(Keyword.get(opts, :pool, Bridge))

    with {:ok, s} <- settings(opts, config),
         {:ok, packed, sent} <- Wire.pack(args, s.compress, speed(node)) do
      attempt(node, [node], function_ref, packed, sent, s)
    end
  end

  defp attempt(node, tried, function_ref, packed, sent, s) do
    remote_opts = Keyword.put(s.opts, :node, node)
    started = System.monotonic_time(:microsecond)
    tag = make_ref()

    request =
      :erpc.send_request(node, __MODULE__, :serve, [
        function_ref,
        packed,
        remote_opts,
        {self(), s.compress, tag}
      ])

    case await(request, node, deadline(s.timeout), s.node_timeout) do
      {:ok, {:ok, result, served_us, received}} ->
        rtt = System.monotonic_time(:microsecond) - started
        learn(node, sent, received, rtt - served_us)
        unpack(result, s.compress)

      {:ok, {:error, %Error{}} = error} ->
        error

      {:ok, other} ->
        {:error, Error.new(:bad_frame, :bad_term, field: :reply, value: other, limit: "a reply")}

      :timeout ->
        given_up(node, tag, s)
        {:error, Error.new(:timeout, :timeout, field: :timeout, value: s.timeout)}

      {:node_down, why} ->
        given_up(node, tag, s)
        next = s.retry > 0 && Cluster.pick(s.pool, tried, s.node_timeout)

        if next,
          do:
            attempt(next, [next | tried], function_ref, packed, sent, %{s | retry: s.retry - 1}),
          else: {:error, node_down(node, why, s.node_timeout)}

      {:failed, reason} ->
        {:error, no_pool(s.pool, node, reason)}
    end
  end

  # A result: :handle call given up on keeps nothing there (it may still finish).
  defp given_up(node, tag, s) do
    if Keyword.get(s.opts, :result) == :handle, do: Bridge.Handle.abandon(node, tag)
  end

  @doc false
  # On the pool's node (through :erpc): the arguments unpacked, the call made
  # here, its result packed for the way back. Never raises.
  # With result: :handle the value stays here, held for the caller (SPEC §15.5).
  # Under compress: :none nothing was packed, and nothing is unpacked: a term
  # that looks packed reaches the encoder, which refuses it (SPEC §15.2).
  @spec serve(Bridge.function_ref(), term(), keyword(), {pid(), Wire.setting(), reference()}) ::
          {:ok, term(), non_neg_integer(), map() | nil} | {:error, Error.t()}
  def serve(function_ref, packed, opts, {caller, compress, tag}) do
    started = System.monotonic_time(:microsecond)
    {result_opt, opts} = Keyword.pop(opts, :result)

    with {:ok, args} <- unpack(packed, compress),
         {:ok, value} <- Bridge.Call.run(function_ref, args, opts),
         {:ok, result, bytes} <- reply(value, result_opt, {caller, tag}, compress) do
      {:ok, result, System.monotonic_time(:microsecond) - started, bytes}
    end
  end

  @doc false
  @spec unpack(term(), Wire.setting()) :: {:ok, term()} | {:error, Error.t()}
  def unpack(term, :none), do: {:ok, term}
  def unpack(term, _setting), do: Wire.unpack(term, @max_decoded)

  defp reply(value, :handle, {caller, tag}, _compress),
    do: {:ok, Bridge.Handle.hold(value, caller, tag), nil}

  defp reply(value, _, {caller, _tag}, compress),
    do: Wire.pack(value, compress, speed(node(caller)))

  @doc false
  # The call's options resolved: call options first, then the local pool's,
  # then the defaults. `opts` are what the other node's call gets.
  @spec settings(keyword(), Config.t() | nil) :: {:ok, map()} | {:error, Error.t()}
  def settings(opts, config) do
    with {:ok, node_timeout} <- node_timeout(opts, config),
         {:ok, retry} <- retry(opts),
         {:ok, compress} <- compress(opts, config),
         {:ok, timeout} <- timeout(opts, config) do
      {:ok,
       %{
         pool: Keyword.get(opts, :pool, Bridge),
         timeout: timeout,
         node_timeout: node_timeout,
         retry: retry,
         compress: compress,
         opts:
           opts
           |> Keyword.drop([:node, :retry, :node_timeout, :timeout])
           |> Keyword.put(:compress, :none)
           |> with_timeout(timeout)
       }}
    end
  end

  defp node_timeout(opts, config) do
    default = if config, do: config.node_timeout, else: @default_node_timeout

    case Keyword.get(opts, :node_timeout, default) do
      t when is_integer(t) and t > 0 ->
        {:ok, t}

      t ->
        {:error,
         Error.new(:bad_call, :badarg,
           field: :node_timeout,
           value: t,
           limit: "a positive integer (milliseconds)"
         )}
    end
  end

  defp retry(opts) do
    case Keyword.get(opts, :retry, 0) do
      n when is_integer(n) and n >= 0 ->
        {:ok, n}

      n ->
        {:error,
         Error.new(:bad_call, :badarg, field: :retry, value: n, limit: "a non-negative integer")}
    end
  end

  @doc false
  @spec compress(keyword(), Config.t() | nil) :: {:ok, Wire.setting()} | {:error, Error.t()}
  def compress(opts, config) do
    default = if config, do: config.compress, else: :auto
    c = Keyword.get(opts, :compress, default)

    if c in Wire.settings(),
      do: {:ok, c},
      else:
        {:error,
         Error.new(:bad_call, :badarg,
           field: :compress,
           value: c,
           limit: ":auto, :none, :lz4, :zstd or :gzip"
         )}
  end

  # A caller with no pool here and no :timeout of its own takes the other
  # node's pool's (it enforces it there; this side waits as long as that node
  # answers): nil.
  defp timeout(opts, config), do: Bridge.Call.timeout(opts, if(config, do: config.timeout))

  defp with_timeout(opts, nil), do: opts
  defp with_timeout(opts, t), do: Keyword.put(opts, :timeout, t)

  defp deadline(t) when t in [:infinity, nil], do: :infinity
  defp deadline(timeout), do: System.monotonic_time(:millisecond) + Bridge.Call.wait(timeout)

  @doc false
  # The reply of `request`, waiting until `deadline` while `node` answers.
  @spec await(:erpc.request_id(), node(), integer() | :infinity, pos_integer()) ::
          {:ok, term()} | :timeout | {:node_down, atom()} | {:failed, term()}
  def await(request, node, deadline, node_timeout) do
    left = if deadline == :infinity, do: @poll, else: deadline - now()

    case :erpc.wait_response(request, max(min(left, @poll), 0)) do
      {:response, reply} ->
        {:ok, reply}

      :no_response ->
        cond do
          left <= 0 -> abandon(request, :timeout)
          not Cluster.answering?(node, node_timeout) -> abandon(request, {:node_down, :silent})
          true -> await(request, node, deadline, node_timeout)
        end
    end
  catch
    :error, {:erpc, :noconnection} -> {:node_down, :noconnection}
    class, reason -> abandon(request, {:failed, {class, reason}})
  end

  # A request given up: its late reply, if any comes, is dropped.
  defp abandon(request, result) do
    _ = :erpc.receive_response(request, 0)
    result
  catch
    _, _ -> result
  end

  @doc false
  # Bytes per second of the connection to `node`, as calls measured it.
  @spec speed(node()) :: float()
  def speed(node) do
    case :ets.lookup(Bridge.Cluster, {:speed, node}) do
      [{_, s}] -> s
      [] -> @first_speed
    end
  catch
    :error, :badarg -> @first_speed
  end

  # What :auto compares a codec with is sending the bytes as they are, so the
  # speed is learned from calls that did: at least @learn_min bytes of large
  # binaries sent plain (and few compressed ones) over the time the call was
  # not being served on the other node. A moving average: a quarter of each new
  # measure.
  defp learn(node, %{plain: plain, framed: framed}, %{plain: p2, framed: f2}, wire_us)
       when plain + p2 >= @learn_min and (framed + f2) * 8 < plain + p2 and wire_us > 0 do
    measured = (plain + p2) / (wire_us / 1.0e6)
    :ets.insert(Bridge.Cluster, {{:speed, node}, 0.75 * speed(node) + 0.25 * measured})
  catch
    :error, :badarg -> true
  end

  defp learn(_node, _sent, _received, _us), do: true

  defp now, do: System.monotonic_time(:millisecond)

  @doc false
  @spec node_down(node(), atom(), pos_integer()) :: Error.t()
  def node_down(node, why, bound) do
    cause =
      case why do
        :silent -> "did not answer for #{bound} ms (:node_timeout)"
        :noconnection -> "lost its connection"
        other -> "went down (#{inspect(other)})"
      end

    Error.new(:node_down, :node_down,
      field: :node,
      value: node,
      limit: bound,
      message:
        "node down: #{node} #{cause} while a call was on it; " <>
          "give retry: n to send idempotent calls to another node instead"
    )
  end

  defp no_pool(pool, node, cause \\ nil) do
    extra = if cause, do: " (#{inspect(cause, limit: 5)})", else: ""

    Error.new(:bad_call, :no_pool,
      field: :node,
      value: node,
      message: "bad call: no_pool: no bridge named #{inspect(pool)} runs on #{node}" <> extra
    )
  end
end
