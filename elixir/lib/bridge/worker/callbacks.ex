defmodule Bridge.Worker.Callbacks do
  @moduledoc false
  # The worker process's part in callbacks into Elixir (protocol/SPEC.md §8.8).
  #
  # {:callback, id, cid, module, function, arity, slices} from the interpreter:
  # checked against the pool's `callbacks` list (nothing else is ever applied,
  # and no atom is made from what the worker sent), its slices planned here and
  # resolved by a short-lived process that hands the arguments to the caller
  # ({:bridge_callback, tag, worker, cid, {module, function}, body, resolved} at
  # the call's reply address), where Bridge.Call.Callbacks runs the function in
  # the caller's own process and casts {:callback_reply, cid, reply} back.
  #
  # {:send, id, cid, dest, slices}: `dest` a pid this node gave out (its MAC,
  # Bridge.Pids) or a name the list allows ({:send, name}); a short-lived
  # process decodes the message and sends it, then answers.
  #
  # A callback of a call that timed out, or that is refused, is answered at once
  # with {:callback_error, ...}; its slices are leased and let go all the same.

  alias Bridge.{Call, Control, Error, Pids}
  alias Bridge.Worker.{Interpreter, Objects, Replies}

  @max_message 2_000
  @max_arity 255

  @doc false
  # A callback or send frame of the call in flight: the state after it, or a
  # protocol violation (a frame of the wrong shape: nothing of it is looked at
  # further, not even to write an error message).
  @spec frame(map(), tuple(), binary()) :: {:ok, map()} | {:error, Error.t()}
  def frame(state, {:callback, _id, cid, module, function, arity, entries}, body)
      when is_integer(cid) and cid > 0 and is_binary(module) and byte_size(module) <= 255 and
             is_binary(function) and byte_size(function) <= 255 and is_integer(arity) and
             arity >= 0 and arity <= @max_arity do
    with {:ok, plan, state} <- plan(state, entries) do
      case allowed(state.config.callbacks, module, function, arity) do
        _ when state.call.cancelled ->
          refuse(state, cid, plan, :no_caller, "the call timed out: nobody runs its callbacks")

        {:ok, fun} ->
          forward(state, cid, fun, body, plan)

        :error ->
          refuse(state, cid, plan, :not_allowed, not_allowed(module, function, arity))
      end
    end
  end

  def frame(state, {:send, _id, cid, dest, entries}, body)
      when is_integer(cid) and cid > 0 and
             ((is_binary(dest) and byte_size(dest) <= 255) or
                (is_tuple(dest) and tuple_size(dest) == 3 and elem(dest, 0) == :"$bb_pid")) do
    with {:ok, plan, state} <- plan(state, entries) do
      case target(state.config.callbacks, dest) do
        _ when state.call.cancelled ->
          refuse(state, cid, plan, :no_caller, "the call timed out")

        {:ok, target} ->
          deliver(state, cid, target, body, plan)

        {:error, message} ->
          refuse(state, cid, plan, :not_allowed, message)
      end
    end
  end

  def frame(_state, envelope, _body),
    do: {:error, violation(envelope, "a callback or send of SPEC §8.8")}

  @doc false
  # The answer to callback `cid` of call `id` (from the caller, or the process
  # that sent a message): to the interpreter when that call still waits for it.
  @spec reply(map(), pos_integer(), pos_integer(), tuple()) :: map()
  def reply(
        %{phase: :busy, call: %{id: id, cancelled: false, callbacks: pending} = call} = state,
        id,
        cid,
        r
      )
      when is_map_key(pending, cid) do
    state = %{state | call: %{call | callbacks: Map.delete(pending, cid)}}

    case r do
      {:ok, entries, body, slices} ->
        case Objects.lend(state.objects, state.config.arena, slices) do
          {:ok, objects, announcements} ->
            frames = announcements ++ [Control.frame({:callback_ok, cid, entries}, body)]
            Enum.each(frames, &Interpreter.send_frame(state, &1))
            %{state | objects: objects}

          {:error, error} ->
            send_error(state, cid, :bad_callback_value, Exception.message(error))
            state
        end

      {:error, reason, type, message} ->
        send_error(state, cid, reason, type, message)
        state
    end
  end

  def reply(state, _id, _cid, _reply), do: state

  @doc false
  # The caller of the call in flight exited while callbacks waited for it: each
  # is answered :no_caller, so the handler is not left waiting for ever.
  @spec caller_down(map()) :: map()
  def caller_down(%{call: %{callbacks: pending} = call} = state) do
    for {cid, _} <- pending,
        do: send_error(state, cid, :no_caller, "the caller exited: nobody runs the callback")

    %{state | call: %{call | callbacks: %{}, watch: nil}}
  end

  ## The list

  @doc false
  # The pool option: {module, function, arity} entries and {:send, name} ones.
  @spec check([term()]) :: :ok | :error
  def check(list) when is_list(list) do
    if Enum.all?(list, &entry?/1), do: :ok, else: :error
  end

  def check(_), do: :error

  defp entry?({m, f, a}) when is_atom(m) and is_atom(f) and is_integer(a) and a >= 0, do: true
  defp entry?({:send, name}) when is_atom(name), do: true
  defp entry?(_), do: false

  # The allowed function `module.function/arity` names (binaries, as Python sends
  # them: "MyApp.Repo" or "Elixir.MyApp.Repo", "lists" or ":lists").
  defp allowed(list, module, function, arity)
       when is_binary(module) and is_binary(function) and is_integer(arity) do
    Enum.find_value(list, :error, fn
      {m, f, ^arity} ->
        if module in names(m) and Atom.to_string(f) == function, do: {:ok, {m, f, arity}}

      _ ->
        nil
    end)
  end

  defp allowed(_list, _module, _function, _arity), do: :error

  defp names(m), do: [Atom.to_string(m), inspect(m)]

  defp target(_list, {:"$bb_pid", etf, mac}) do
    case Pids.from_wire(etf, mac) do
      {:ok, pid} -> {:ok, pid}
      :error -> {:error, "a pid this node did not give out (its MAC is not this node's)"}
    end
  end

  defp target(list, name) when is_binary(name) do
    Enum.find_value(list, {:error, "no {:send, #{name}} in the pool's callbacks"}, fn
      {:send, n} -> if name in names(n), do: {:ok, n}
      _ -> nil
    end)
  end

  defp target(_list, _dest), do: {:error, "a destination is a pid or a name"}

  defp not_allowed(module, function, arity) do
    "#{module}.#{function}/#{arity} is not in the pool's callbacks " <>
      "(add {#{module}, :#{function}, #{arity}} to allow it)"
  end

  ## Forwarding

  defp plan(state, entries) do
    case Objects.plan(state.objects, entries, state.config.untrusted) do
      {:ok, plan, objects} -> {:ok, plan, %{state | objects: objects}}
      {:error, _} = error -> error
    end
  end

  defp refuse(state, cid, plan, reason, message) do
    Replies.discard(plan, state.port)
    send_error(state, cid, reason, message)
    {:ok, state}
  end

  # No slices to resolve (small arguments): straight to the caller.
  defp forward(state, cid, fun, body, []) do
    {to, tag} = reply_address(state.call.from)
    send(to, {:bridge_callback, tag, self(), {state.call.id, cid}, fun, body, {}})
    {:ok, pending(state, cid)}
  end

  defp forward(state, cid, fun, body, plan) do
    {to, tag} = reply_address(state.call.from)
    worker = self()
    port = state.port
    key = {state.call.id, cid}

    spawn(fn ->
      case Objects.resolve(plan) do
        {:ok, resolved, sealed} ->
          if sealed != [], do: GenServer.cast(worker, {:sealed_mapped, port, sealed})
          send(to, {:bridge_callback, tag, worker, key, fun, body, resolved})

        {:error, error} ->
          Bridge.Worker.bad_answer(worker, error)
      end
    end)

    {:ok, pending(state, cid)}
  end

  defp deliver(state, cid, target, body, plan) do
    worker = self()
    port = state.port
    config = state.config
    id = state.call.id

    spawn(fn ->
      # whatever happens here, the handler gets an answer
      reply =
        try do
          with {:ok, resolved, sealed} <- Objects.resolve(plan),
               _ = if(sealed != [], do: GenServer.cast(worker, {:sealed_mapped, port, sealed})),
               {:ok, [message]} <- Call.decode(body, resolved, worker, config) do
            send_to(target, message)
          else
            {:ok, _other} -> {:error, :bad_callback_value, "", "a message is a list of one"}
            {:error, error} -> {:error, :bad_callback_value, "", Exception.message(error)}
          end
        rescue
          e -> {:error, :bad_callback_value, "", Exception.message(e)}
        end

      GenServer.cast(worker, {:callback_reply, id, cid, reply})
    end)

    {:ok, pending(state, cid)}
  end

  defp send_to(target, message) do
    send(target, message)
    {:ok, [], :erlang.term_to_binary([:ok]), []}
  rescue
    ArgumentError ->
      {:error, :callback_raised, "ArgumentError",
       "no process is registered as #{inspect(target)}"}
  end

  # The callback waits for its answer; the caller is watched meanwhile (one
  # that exits cannot answer: caller_down/1).
  defp pending(%{call: call} = state, cid) do
    watch = call.watch || Process.monitor(elem(call.from, 0))
    %{state | call: %{call | callbacks: Map.put(call.callbacks, cid, true), watch: watch}}
  end

  # Where a call's caller waits (Bridge.Stream.Session): its reply alias, so a
  # caller that gave up on the call never gets them.
  defp reply_address({pid, [:alias | alias]}) when is_pid(pid), do: {alias, alias}
  defp reply_address({pid, tag}), do: {pid, tag}

  defp send_error(state, cid, reason, type \\ "", message) do
    frame = Control.frame({:callback_error, cid, reason, type, truncate(message)})
    Interpreter.send_frame(state, frame)
  end

  defp truncate(message) when byte_size(message) > @max_message,
    do: binary_part(message, 0, @max_message) <> "…"

  defp truncate(message), do: message

  defp violation(envelope, expected) do
    Error.new(:bad_frame, :unexpected_message,
      field: :control_frame,
      value: elem(envelope, 0),
      limit: expected,
      message:
        "bad frame: unexpected_message: a #{elem(envelope, 0)} frame that is not #{expected}"
    )
  end
end
