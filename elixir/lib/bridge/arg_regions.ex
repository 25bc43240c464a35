defmodule Bridge.ArgRegions do
  @moduledoc false
  # The argument regions of one worker (SPEC §7.4, §7.5): BEAM-owned regions,
  # kept warm and reused, in power-of-two size classes of at least 64 KiB of
  # payload (plus 4 KiB for header and metadata).
  #
  #   free        — not used by the call being built; writable unless Python
  #                 still holds a view (write_frame then says :leased)
  #   in_use      — carry an argument of the call being built / in flight
  #   quarantine  — write_frame found a live reader lease (a handler kept a
  #                 memoryview/ndarray of an earlier argument); retried when
  #                 nothing else fits, after their lease count drops to 0
  #
  # The sum of region sizes never exceeds `limit`: past it, free regions are
  # evicted (their names are returned so the worker is told to detach first),
  # and when that is not enough the caller sends the argument inline.

  alias Bridge.{ControlBlock, Header, Region}

  import Bitwise

  @min_class 65_536
  @header_room 4_096
  @cb 64

  defstruct prefix: "bb", limit: 0, checksum: true, total: 0, free: [], in_use: [], quarantine: []

  @type entry :: {Region.t(), capacity :: non_neg_integer()}
  @type t :: %__MODULE__{}

  # `checksum`: write PAYLOAD_CHECKSUM (xxh3 of the payload) into each frame;
  # off when the bridge runs with verify: false, as nobody would check it.
  @spec new(String.t(), non_neg_integer(), boolean()) :: t()
  def new(prefix, limit, checksum \\ true),
    do: %__MODULE__{prefix: prefix, limit: limit, checksum: checksum}

  @doc false
  # Writes one frame into a region. Returns {:ok, {name, generation}, state,
  # evicted} or {:inline, reason, state, evicted}; `evicted` are regions no
  # longer tracked, which the caller destroys (Region.close/1) after telling
  # the worker to detach them.
  @spec put(t(), iodata(), keyword()) ::
          {:ok, {String.t(), pos_integer()}, t(), [Region.t()]}
          | {:inline, term(), t(), [Region.t()]}
  def put(state, payload, frame_opts) do
    frame_opts = Keyword.put(frame_opts, :checksum, state.checksum)
    metadata = Keyword.get(frame_opts, :metadata, "")
    need = Header.payload_offset_for(byte_size(metadata)) + IO.iodata_length(payload)

    case write_free(state, need, payload, frame_opts) do
      {:ok, handle, state} ->
        {:ok, handle, state, []}

      {:none, state} ->
        state = release_quarantine(state)

        case write_free(state, need, payload, frame_opts) do
          {:ok, handle, state} -> {:ok, handle, state, []}
          {:none, state} -> create_and_write(state, need, metadata, payload, frame_opts)
        end
    end
  end

  # The call is over: its regions may be written again.
  @spec release(t()) :: t()
  def release(%__MODULE__{in_use: used, free: free} = state),
    do: %{state | in_use: [], free: used ++ free}

  # Closes (unlinks) every region; returns the names (to detach if the worker lives).
  @spec close_all(t()) :: {[String.t()], t()}
  def close_all(%__MODULE__{} = state) do
    entries = state.free ++ state.in_use ++ state.quarantine
    Enum.each(entries, fn {region, _} -> Region.close(region) end)

    {Enum.map(entries, fn {region, _} -> region.name end),
     new(state.prefix, state.limit, state.checksum)}
  end

  @spec names(t()) :: [String.t()]
  def names(state),
    do: Enum.map(state.free ++ state.in_use ++ state.quarantine, fn {r, _} -> r.name end)

  defp write_free(state, need, payload, frame_opts) do
    candidates =
      state.free
      |> Enum.filter(fn {_, cap} -> cap >= need end)
      |> Enum.sort_by(fn {_, cap} -> cap end)

    try_candidates(candidates, state, payload, frame_opts)
  end

  defp try_candidates([], state, _payload, _opts), do: {:none, state}

  defp try_candidates([{region, _} = entry | rest], state, payload, opts) do
    free = List.delete(state.free, entry)

    case Region.write_frame(region, payload, opts) do
      {:ok, header} ->
        {:ok, {region.name, header.generation},
         %{state | free: free, in_use: [entry | state.in_use]}}

      {:error, %{kind: :lease}} ->
        try_candidates(
          rest,
          %{state | free: free, quarantine: [entry | state.quarantine]},
          payload,
          opts
        )

      {:error, _} ->
        # Closed under us or similar: drop it.
        Region.close(region)

        try_candidates(
          rest,
          %{state | free: free, total: state.total - region.size},
          payload,
          opts
        )
    end
  end

  defp release_quarantine(state) do
    {released, held} =
      Enum.split_with(state.quarantine, fn {region, _} ->
        match?({:ok, 0}, Bridge.NIF.load_u32(region.ref, ControlBlock.reader_leases_off()))
      end)

    %{state | quarantine: held, free: released ++ state.free}
  end

  defp create_and_write(state, need, metadata, payload, frame_opts) do
    size = region_size(byte_size(metadata), IO.iodata_length(payload))

    if size > state.limit do
      {:inline, {:region_limit, size, state.limit}, state, []}
    else
      {state, detached} = evict(state, size)

      if state.total + size > state.limit do
        {:inline, {:region_limit, state.total + size, state.limit}, state, detached}
      else
        case Region.create(size, prefix: state.prefix) do
          {:ok, region} ->
            entry = {region, size - @cb}
            state = %{state | total: state.total + size, free: [entry | state.free]}

            case try_candidates([entry], state, payload, frame_opts) do
              {:ok, handle, state} -> {:ok, handle, state, detached}
              {:none, state} -> {:inline, {:write_failed, need}, state, detached}
            end

          {:error, error} ->
            {:inline, error, state, detached}
        end
      end
    end
  end

  # Evict free regions, smallest first, until `size` more bytes fit. The
  # victims are returned, not closed: the worker detaches them first.
  defp evict(state, size) do
    victims =
      state.free
      |> Enum.sort_by(fn {_, cap} -> cap end)
      |> Enum.reduce_while({[], state.total}, fn {region, _} = entry, {acc, total} ->
        if total + size <= state.limit,
          do: {:halt, {acc, total}},
          else: {:cont, {[entry | acc], total - region.size}}
      end)
      |> elem(0)

    if victims == [] do
      {state, []}
    else
      freed = victims |> Enum.map(fn {region, _} -> region.size end) |> Enum.sum()

      {%{state | free: state.free -- victims, total: state.total - freed},
       Enum.map(victims, fn {region, _} -> region end)}
    end
  end

  @doc false
  # Region size for a payload: 64-byte control block, 4 KiB for header and
  # metadata, and a power-of-two payload class of at least 64 KiB.
  @spec region_size(non_neg_integer(), non_neg_integer()) :: pos_integer()
  def region_size(metadata_length, payload_length) do
    room = max(@header_room, Header.payload_offset_for(metadata_length))
    @cb + room + class(payload_length)
  end

  defp class(n) when n <= @min_class, do: @min_class
  defp class(n), do: 1 <<< bit_length(n - 1)

  defp bit_length(n), do: length(Integer.digits(n, 2))
end
