defmodule Bridge.Worker.Objects do
  @moduledoc false
  # The shared objects between one worker process and this node
  # (protocol/SPEC.md): the lease table this node keeps for the worker,
  # the worker's arenas mapped here (peers), which of this node's arenas the worker
  # has been told about (announced), and the slices of this node lent to the worker
  # (lent, by {arena id, offset}). State of Bridge.Worker, one per interpreter.
  #
  # Nothing here holds a lease on a worker slice or a binary over one: those are
  # made in a short-lived process per answer (resolve/2), so no long-lived heap
  # keeps a result's memory alive after the caller has dropped it.

  alias Bridge.{Arena, Control, Error, LeaseTable, Peer}

  @tickets 65_536

  defstruct table: nil, peers: %{}, sealed: %{}, announced: MapSet.new(), lent: %{}

  @type t :: %__MODULE__{}

  @doc false
  # A new interpreter: a fresh lease table (the old one lives while leases on the
  # dead worker's slices do) and the frame that announces it.
  @spec start() :: {:ok, t(), iodata()} | {:error, Error.t()}
  def start do
    with {:ok, table} <- LeaseTable.new(@tickets) do
      {:ok, %__MODULE__{table: table}, Control.frame(LeaseTable.announcement(table))}
    end
  end

  @doc false
  # Lends a call's slices to the worker; returns the announcement frames of
  # arenas the worker has not seen yet. A slice its caller already gave up
  # (:released) fails the call: everything lent for it is returned.
  @spec lend(t(), Arena.t(), [Arena.Slice.t()]) ::
          {:ok, t(), [iodata()]} | {:error, Error.t()}
  def lend(objects, arena, slices) do
    Enum.reduce_while(slices, {:ok, objects, []}, fn s, {:ok, objects, frames} ->
      case Arena.lend(s) do
        :ok ->
          objects = %{objects | lent: Map.put(objects.lent, {s.arena_id, s.offset}, s)}
          {objects, frames} = announce(objects, arena, s.arena_id, frames)
          {:cont, {:ok, objects, frames}}

        {:error, error} ->
          Enum.each(slices, fn x -> if x != s, do: maybe_return(objects, x) end)
          {:halt, {:error, error}}
      end
    end)
  end

  defp maybe_return(objects, s) do
    if Map.has_key?(objects.lent, {s.arena_id, s.offset}), do: Arena.return(s)
  end

  defp announce(objects, arena, id, frames) do
    if MapSet.member?(objects.announced, id) do
      {objects, frames}
    else
      case Arena.announcement(arena, id) do
        {:ok, a} ->
          {%{objects | announced: MapSet.put(objects.announced, id)}, [Control.frame(a) | frames]}

        {:error, _} ->
          {objects, frames}
      end
    end
  end

  @doc false
  # The worker no longer reads these slices (`released` of §8.3).
  @spec released(t(), term()) :: {:ok, t()} | {:error, Error.t()}
  def released(objects, list) do
    if entries?(list, 3) do
      {:ok, Enum.reduce(list, objects, &release_one/2)}
    else
      {:error, violation(list, "a proper list of {object_id, offset, generation}")}
    end
  end

  defp release_one({id, offset, generation}, acc) do
    case Map.pop(acc.lent, {id, offset}) do
      {%Arena.Slice{generation: ^generation} = s, lent} ->
        Arena.return(s)
        %{acc | lent: lent}

      _ ->
        acc
    end
  end

  # A proper list of n-tuples of integers (a worker's list, checked before use).
  defp entries?(list, n) do
    is_list(list) and proper?(list) and
      Enum.all?(list, &(is_tuple(&1) and tuple_size(&1) == n and ints?(&1)))
  end

  defp proper?([]), do: true
  defp proper?([_ | t]), do: proper?(t)
  defp proper?(_), do: false

  defp ints?(tuple), do: tuple |> Tuple.to_list() |> Enum.all?(&is_integer/1)

  @doc false
  # The interpreter is gone: every lease it held on this node's slices ends.
  @spec return_all(t()) :: t()
  def return_all(objects) do
    Enum.each(objects.lent, fn {_, s} -> Arena.return(s) end)
    Enum.each(objects.peers, fn {_, peer} -> Peer.close(peer) end)
    %__MODULE__{}
  end

  @doc false
  # The frames that tell the worker these arenas of this node are gone.
  @spec dropped(t(), [pos_integer()]) :: {t(), [iodata()]}
  def dropped(objects, ids) do
    told = Enum.filter(ids, &MapSet.member?(objects.announced, &1))

    {%{objects | announced: Enum.reduce(told, objects.announced, &MapSet.delete(&2, &1))},
     Enum.map(told, &Control.frame({:object_dropped, &1}))}
  end

  @doc false
  # What the worker's arenas take here: their bytes, and the leases live on
  # their slices (results callers still hold) with those slices' bytes.
  @spec usage(t()) :: %{
          worker_arena_bytes: non_neg_integer(),
          held_slices: non_neg_integer(),
          held_bytes: non_neg_integer()
        }
  def usage(objects) do
    Enum.reduce(
      objects.peers,
      %{worker_arena_bytes: 0, held_slices: 0, held_bytes: 0},
      fn {_id, peer}, acc ->
        case Bridge.NIF.peer_info(peer) do
          {:ok, {_id, _kind, size, leases, leased}} ->
            %{
              worker_arena_bytes: acc.worker_arena_bytes + size,
              held_slices: acc.held_slices + leases,
              held_bytes: acc.held_bytes + leased
            }

          _ ->
            acc
        end
      end
    )
  end

  @doc false
  # {:object, kind, owner_pid, fd, id, size, nonce} from the worker. Arenas are
  # mapped now and kept; a sealed object is mapped by the process that answers
  # the call naming it (resolve/2), so its mapping lives exactly as long as the
  # caller's binaries over it.
  @spec object(t(), tuple(), pos_integer()) :: {:ok, t()} | {:error, Error.t()}
  def object(objects, {:object, :arena, pid, _fd, id, _size, _nonce} = a, pid) do
    with {:ok, peer} <- Peer.open(a),
         do: {:ok, %{objects | peers: Map.put(objects.peers, id, peer)}}
  end

  def object(objects, {:object, :sealed, pid, _fd, id, _size, _nonce} = a, pid),
    do: {:ok, %{objects | sealed: Map.put(objects.sealed, id, a)}}

  def object(_objects, other, pid),
    do: {:error, violation(other, "an {:object, :arena | :sealed, #{pid}, ...} of the worker")}

  @doc false
  @spec drop(t(), pos_integer()) :: t()
  def drop(objects, id) do
    case Map.pop(objects.peers, id) do
      {nil, _} ->
        objects

      {peer, peers} ->
        Peer.close(peer)
        %{objects | peers: peers}
    end
  end

  @doc false
  # Checks an answer's `slices` (§8.3) and turns them into a plan that resolve/2
  # carries out in another process. A slice of this node named by the answer is
  # held at once, before any later `released` list can free it.
  @spec plan(t(), list(), boolean()) :: {:ok, [tuple()], t()} | {:error, Error.t()}
  def plan(objects, entries, untrusted) when is_list(entries) do
    if proper?(entries),
      do: plan_entries(objects, entries, untrusted),
      else: plan(objects, nil, untrusted)
  end

  def plan(_objects, entries, _untrusted),
    do: {:error, violation(entries, "a list of slice entries")}

  defp plan_entries(objects, entries, untrusted) do
    result =
      Enum.reduce_while(entries, {:ok, [], objects}, fn entry, {:ok, acc, objects} ->
        case step(objects, entry, untrusted) do
          {:ok, step, objects} -> {:cont, {:ok, [step | acc], objects}}
          {:error, _} = error -> {:halt, {error, acc}}
        end
      end)

    case result do
      {:ok, steps, objects} ->
        {:ok, Enum.reverse(steps), objects}

      {{:error, _} = error, steps} ->
        unhold(steps)
        error
    end
  end

  defp step(objects, {:worker, id, offset, length, generation, ticket} = e, false)
       when is_integer(offset) and is_integer(length) and is_integer(generation) and
              is_integer(ticket) and ticket >= 0 and ticket < @tickets do
    case objects.peers do
      %{^id => peer} ->
        {:ok, {:lease, peer, offset, length, objects.table, {ticket, generation}}, objects}

      _ ->
        {:error, violation(e, "a slice of an arena the worker announced")}
    end
  end

  defp step(objects, {:sealed, id, offset, length, generation} = e, _untrusted)
       when is_integer(offset) and is_integer(length) and is_integer(generation) do
    case Map.pop(objects.sealed, id) do
      {nil, _} -> {:error, violation(e, "the frame of a sealed object the worker announced")}
      {a, sealed} -> {:ok, {:sealed, a, offset, length, generation}, %{objects | sealed: sealed}}
    end
  end

  # An untrusted pool's handler could write this node's arena through /proc, so
  # bytes it echoes are copied; otherwise they stay a view (a pin) of the slice.
  defp step(objects, {:beam, id, offset, generation, start, length} = e, untrusted)
       when is_integer(start) and is_integer(length) and start >= 128 and length >= 0 do
    with %Arena.Slice{generation: ^generation} = s <- Map.get(objects.lent, {id, offset}),
         true <- start + length <= s.length,
         :ok <- Arena.hold(s) do
      {:ok, {if(untrusted, do: :copy, else: :pin), s, start, length}, objects}
    else
      _ -> {:error, violation(e, "bytes of an argument slice the worker still holds")}
    end
  end

  defp step(_objects, {:worker, _, _, _, _, _} = e, true),
    do: {:error, violation(e, "a sealed object (the pool is untrusted: results must be sealed)")}

  defp step(_objects, e, _untrusted), do: {:error, violation(e, "a slice entry (SPEC §8.3)")}

  defp unhold(steps), do: Enum.each(steps, &release_step(&1, nil))

  @doc false
  # Runs a plan (in the short-lived process that answers the caller): leases on
  # worker slices, sealed objects mapped, binaries over this node's own slices.
  # Returns the `resolved` tuple Bridge.Decoder reads, and the ids of the sealed
  # objects mapped.
  @spec resolve([tuple()]) :: {:ok, tuple(), [pos_integer()]} | {:error, Error.t()}
  def resolve(plan) do
    {resolved, sealed, error} =
      Enum.reduce(plan, {[], [], nil}, fn step, {acc, sealed, error} ->
        case error == nil && run(step) do
          {:ok, entry, id} -> {[entry | acc], [id | sealed], nil}
          {:ok, entry} -> {[entry | acc], sealed, nil}
          {:error, e} -> {acc, sealed, e}
          false -> {acc, sealed, release_step(step, error)}
        end
      end)

    if error,
      do: {:error, error},
      else: {:ok, resolved |> Enum.reverse() |> List.to_tuple(), sealed}
  end

  defp release_step({mode, s, _, _}, error) when mode in [:pin, :copy] do
    Arena.unhold(s)
    error
  end

  defp release_step(_step, error), do: error

  defp run({:lease, peer, offset, length, table, {_ticket, generation} = tg}) do
    with {:ok, lease} <- Peer.lease(peer, offset, length, table, tg),
         do: {:ok, {:lease, lease, length, generation}}
  end

  defp run({:sealed, {:object, :sealed, _, _, id, _, _} = a, offset, length, generation}) do
    with {:ok, peer} <- Peer.open(a) do
      # the lease keeps the mapping; nothing else may
      result = Peer.lease(peer, offset, length, nil, nil)
      Peer.close(peer)

      with {:ok, lease} <- result, do: {:ok, {:lease, lease, length, generation}, id}
    end
  end

  defp run({mode, s, start, length}) when mode in [:pin, :copy] do
    result =
      if mode == :pin, do: Arena.binary(s, start, length), else: Arena.read(s, start, length)

    Arena.unhold(s)

    case result do
      {:ok, bin} -> {:ok, {:binary, bin}}
      error -> error
    end
  end

  defp violation(term, expected) do
    Error.new(:bad_frame, :bad_slice,
      field: :slices,
      value: term,
      limit: expected,
      message:
        "bad frame: bad_slice: the worker sent #{inspect(term, limit: 8)} (expected #{expected})"
    )
  end
end
