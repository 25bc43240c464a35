defmodule Bridge.Arena do
  @moduledoc """
  Shared memory this node owns, for values it sends to workers
  (protocol/SPEC.md §1, §3).

  An arena set is a bounded group of sealed, anonymous shared-memory objects
  (`memfd`) that any process of the node allocates *slices* from; each slice
  holds one frame. Allocation state lives in the NIF, guarded by a mutex, so
  many callers write their own arguments at once, and none of it lives in
  shared memory. Open file descriptors stay bounded whatever the traffic: at
  most 16 arenas, each one descriptor and one mapping.

  A slice stays allocated while anything holds it: the process that allocated
  it (until `release/1`, or until its slice handle is garbage-collected), the
  worker it was lent to (`lend/1` .. `return/1`), and every zero-copy binary
  made from it with `binary/3`.

  ## Example

      iex> {:ok, arena} = Bridge.Arena.new(limit: 16 * 1024 * 1024, min_arena: 65_536)
      iex> {:ok, slice} = Bridge.Arena.put(arena, "hello", format: :raw)
      iex> {slice.length, rem(slice.offset, 64)}
      {192, 0}
      iex> {:ok, frame} = Bridge.Arena.read(slice, 0, 133)
      iex> binary_part(frame, 128, 5)
      "hello"
      iex> Bridge.Arena.release(slice)
      :ok
      iex> {:ok, %{live: 0, arenas: 1}} = Bridge.Arena.stats(arena)
      iex> Bridge.Arena.close(arena)
      :ok
  """

  import Bitwise

  alias Bridge.{Error, Header, NIF}

  defmodule Slice do
    @moduledoc """
    A slice of an owned arena: the NIF handle and where it lies.

    `generation` is the slice's allocation number, stamped into its frame header
    and into its handle (protocol/SPEC.md §3).
    """
    @enforce_keys [:ref, :arena_id, :offset, :length, :generation]
    defstruct [:ref, :arena_id, :offset, :length, :generation]

    @type t :: %__MODULE__{
            ref: reference(),
            arena_id: pos_integer(),
            offset: non_neg_integer(),
            length: pos_integer(),
            generation: pos_integer()
          }
  end

  @enforce_keys [:ref, :limit]
  defstruct [:ref, :limit, checksum: false]

  @type t :: %__MODULE__{ref: reference(), limit: non_neg_integer(), checksum: boolean()}

  @gib 1024 * 1024 * 1024
  @default_min_arena 8 * 1024 * 1024
  @object_header 64
  @page 4096

  @doc """
  A new arena set.

  Options:

    * `:limit` — bytes of arenas the set may hold at once (default 1 GiB).
    * `:min_arena` — size of the first arena; later ones are at least twice the
      largest (default 8 MiB).
    * `:checksum` — write the payload's xxh3 into every frame (default `false`).

  ## Examples

      iex> {:ok, a} = Bridge.Arena.new(limit: 1_048_576)
      iex> a.limit
      1048576
      iex> {:error, e} = Bridge.Arena.new(limit: -1)
      iex> {e.reason, e.field}
      {:badarg, :limit}
  """
  @spec new(keyword()) :: {:ok, t()} | {:error, Error.t()}
  def new(opts \\ []) do
    limit = Keyword.get(opts, :limit, @gib)
    min_arena = Keyword.get(opts, :min_arena, @default_min_arena)
    checksum = Keyword.get(opts, :checksum, false)

    cond do
      not (is_integer(limit) and limit >= 0) ->
        {:error, badarg(:limit, limit, "a non-negative integer (bytes)")}

      not (is_integer(min_arena) and min_arena >= @page) ->
        {:error, badarg(:min_arena, min_arena, "an integer of at least #{@page} (bytes)")}

      not is_boolean(checksum) ->
        {:error, badarg(:checksum, checksum, "a boolean")}

      true ->
        case NIF.arena_set_new(limit, min_arena) do
          {:ok, ref} -> {:ok, %__MODULE__{ref: ref, limit: limit, checksum: checksum}}
          {:error, reason} -> {:error, badarg(:min_arena, {reason, min_arena}, "at most 2^40")}
        end
    end
  end

  @doc """
  The frame length a payload of `payload_length` bytes with `metadata_length`
  bytes of metadata needs, and whether a set with `limit` bytes could ever
  hold it. Callers check this before they copy or encode anything.

  ## Examples

      iex> Bridge.Arena.fits?(1_048_576, 100, 0)
      true
      iex> Bridge.Arena.fits?(1_048_576, 2_000_000, 0)
      false
  """
  @spec fits?(non_neg_integer(), non_neg_integer(), non_neg_integer()) :: boolean()
  def fits?(limit, payload_length, metadata_length) do
    frame = Header.payload_offset_for(metadata_length) + payload_length
    slice = max(round_up(frame, 64), 128)
    round_up(@object_header + slice, @page) <= limit
  end

  @doc """
  Allocates a slice for `payload` (a binary or iodata) and writes the frame into
  it: the header built from `frame_opts` (`Bridge.Header.build/2`'s options;
  the generation is the slice's), the metadata, then the payload. Returns the
  slice, held by the calling process.

  Errors (kind `:arena`): `:too_large` when the frame could never fit in the
  set's `limit`, `:arena_full` when it could but the arenas are full of live
  slices now, `:no_space` when the kernel has no pages for a new arena.

  ## Examples

      iex> {:ok, a} = Bridge.Arena.new(limit: 65_536, min_arena: 65_536)
      iex> {:error, e} = Bridge.Arena.put(a, :binary.copy("x", 70_000), [])
      iex> {e.kind, e.reason, e.field}
      {:arena, :too_large, :arena_limit}
  """
  @spec put(t(), iodata(), keyword()) :: {:ok, Slice.t()} | {:error, Error.t()}
  def put(%__MODULE__{} = arena, payload, frame_opts) do
    with :ok <- check_opts(frame_opts),
         checksum = Keyword.get(frame_opts, :checksum, arena.checksum),
         :ok <- check_checksum(checksum),
         {:ok, h} <- Header.build(payload, stamped(frame_opts)),
         {:ok, slice} <- alloc(arena, h.payload_offset + h.payload_length) do
      flags = if checksum, do: h.flags ||| Header.flag_payload_checksum(), else: h.flags

      with {:ok, header} <- Header.pack(%{h | generation: slice.generation, flags: flags}),
           metadata = Keyword.get(frame_opts, :metadata, ""),
           {:ok, _checksums} <-
             nif(NIF.slice_write_frame(slice.ref, header, metadata, parts(payload), checksum)),
           :ok <- write_provenance(slice, metadata, Keyword.get(frame_opts, :provenance, "")) do
        {:ok, slice}
      else
        {:error, _} = error ->
          release(slice)
          error
      end
    end
  end

  defp check_opts(opts) do
    if is_list(opts) and Keyword.keyword?(opts),
      do: :ok,
      else: {:error, badarg(:opts, opts, "a keyword list")}
  end

  # Every frame says when it was written and its id (SPEC §5.4).
  defp stamped(frame_opts) do
    frame_opts
    |> Keyword.put(:checksum, false)
    |> Keyword.put_new_lazy(:created_at, &Bridge.Provenance.now/0)
    |> Keyword.put_new_lazy(:frame_id, &Bridge.Provenance.frame_id/0)
  end

  # The block goes after the metadata, into the padding the NIF zeroed.
  defp write_provenance(_slice, _metadata, ""), do: :ok

  defp write_provenance(slice, metadata, block),
    do: nif(NIF.slice_write(slice.ref, 128 + byte_size(metadata), block))

  defp check_checksum(c) when is_boolean(c), do: :ok
  defp check_checksum(c), do: {:error, badarg(:checksum, c, "a boolean")}

  defp parts(payload) when is_binary(payload), do: [payload]
  defp parts(payload), do: :erlang.iolist_to_iovec(payload)

  @doc """
  Allocates a slice that can hold a frame of `frame_len` bytes, growing the set
  when no arena has room (see `put/3` for the errors).
  """
  @spec alloc(t(), non_neg_integer()) :: {:ok, Slice.t()} | {:error, Error.t()}
  def alloc(%__MODULE__{} = arena, frame_len), do: alloc(arena, frame_len, 3)

  defp alloc(arena, frame_len, tries) do
    case NIF.slice_alloc(arena.ref, frame_len) do
      {:ok, ref} ->
        {:ok, {arena_id, offset, length, generation}} = NIF.slice_info(ref)

        {:ok,
         %Slice{
           ref: ref,
           arena_id: arena_id,
           offset: offset,
           length: length,
           generation: generation
         }}

      {:error, :no_room} when tries > 0 ->
        case NIF.arena_grow(arena.ref, frame_len, Bridge.Memory.headroom()) do
          {:ok, _id} -> alloc(arena, frame_len, tries - 1)
          {:error, reason} -> {:error, limit_error(reason, arena, frame_len)}
        end

      {:error, reason} ->
        {:error, limit_error(reason, arena, frame_len)}
    end
  end

  @doc false
  # The error for a value whose frame can never fit the set's limit.
  @spec too_large(t(), non_neg_integer()) :: Error.t()
  def too_large(arena, frame_len), do: limit_error(:too_large, arena, frame_len)

  defp limit_error(:no_room, arena, frame_len), do: limit_error(:arena_full, arena, frame_len)

  defp limit_error(reason, arena, frame_len) when reason in [:too_large, :arena_full] do
    Error.new(:arena, reason,
      field: :arena_limit,
      value: frame_len,
      limit: arena.limit,
      message:
        "arena error: #{reason}: a #{frame_len}-byte frame " <>
          if(reason == :too_large,
            do: "can never fit in :arena_limit (#{arena.limit} bytes); raise :arena_limit",
            else:
              "does not fit now: the arenas (:arena_limit #{arena.limit} bytes) are full of " <>
                "values still in use; raise :arena_limit or hold fewer results"
          )
    )
  end

  defp limit_error(reason, arena, frame_len) when reason in [:enospc, :no_space] do
    Error.new(:arena, :no_space,
      field: :arena_limit,
      value: frame_len,
      limit: arena.limit,
      message:
        "arena error: no_space: no memory for a #{frame_len}-byte frame in shared memory " <>
          "(less than #{frame_len} bytes are free on the host or in this process's cgroup, " <>
          "beyond a #{div(Bridge.Memory.margin(), 1024 * 1024)} MiB margin); lower :arena_limit " <>
          "or give the node more memory"
    )
  end

  defp limit_error(reason, _arena, frame_len),
    do: Error.new(:arena, reason, field: :frame_length, value: frame_len)

  @doc "The calling process lets go of `slice` (idempotent)."
  @spec release(Slice.t()) :: :ok
  def release(%Slice{ref: ref}), do: NIF.slice_release(ref)

  @doc "The slice's handle goes to the peer: it stays allocated until `return/1`."
  @spec lend(Slice.t()) :: :ok | {:error, Error.t()}
  def lend(%Slice{ref: ref}), do: nif(NIF.slice_lend(ref))

  @doc "The peer's lease on `slice` ended (idempotent)."
  @spec return(Slice.t()) :: :ok
  def return(%Slice{ref: ref}), do: NIF.slice_return(ref)

  @doc """
  Keeps `slice` allocated until `unhold/1`, whoever else lets go meanwhile (a
  step between two processes: the worker's process holds an argument slice a
  result names until the caller's binary over it exists).
  """
  @spec hold(Slice.t()) :: :ok | {:error, Error.t()}
  def hold(%Slice{ref: ref}), do: nif(NIF.slice_hold(ref))

  @doc "Ends a `hold/1`."
  @spec unhold(Slice.t()) :: :ok | {:error, Error.t()}
  def unhold(%Slice{ref: ref}), do: nif(NIF.slice_unhold(ref))

  @doc """
  A zero-copy binary over `len` bytes of the slice from `off` (slice
  offsets). It keeps the slice allocated until it is garbage-collected.
  """
  @spec binary(Slice.t(), non_neg_integer(), non_neg_integer()) ::
          {:ok, binary()} | {:error, Error.t()}
  def binary(%Slice{ref: ref}, off, len), do: nif(NIF.slice_binary(ref, off, len))

  @doc "A private copy of `len` bytes of the slice from `off`."
  @spec read(Slice.t(), non_neg_integer(), non_neg_integer()) ::
          {:ok, binary()} | {:error, Error.t()}
  def read(%Slice{ref: ref}, off, len), do: nif(NIF.slice_read(ref, off, len))

  @doc """
  Counts: `arenas`, `bytes` (of arenas), `used` (bytes in live slices),
  `live` (slices), `limit`, `peak_bytes`, `peak_used`, `allocs`, `grows`,
  `drops`.
  """
  @spec stats(t()) :: {:ok, map()}
  def stats(%__MODULE__{ref: ref}), do: NIF.arena_set_stats(ref)

  @doc """
  Drops arenas that have held no slice for `idle_ms`, largest first, until the
  empty ones left hold at most `keep_bytes`. Returns the ids dropped, which the
  workers must be told about (`object_dropped`).
  """
  @spec trim(t(), non_neg_integer(), non_neg_integer()) :: {:ok, [pos_integer()]}
  def trim(%__MODULE__{ref: ref}, idle_ms, keep_bytes),
    do: NIF.arena_set_trim(ref, idle_ms, keep_bytes)

  @doc "No new slices; each arena goes once it is empty."
  @spec close(t()) :: :ok
  def close(%__MODULE__{ref: ref}), do: NIF.arena_set_close(ref)

  @doc """
  The announcement of arena `id` to a peer (protocol/SPEC.md §8):
  `{:object, :arena, owner_pid, fd, id, size, nonce}`.
  """
  @spec announcement(t(), pos_integer()) :: {:ok, tuple()} | {:error, Error.t()}
  def announcement(%__MODULE__{ref: ref}, id) do
    case NIF.arena_info(ref, id) do
      {:ok, {fd, size, nonce}} -> {:ok, {:object, :arena, os_pid(), fd, id, size, nonce}}
      {:error, reason} -> {:error, Error.new(:arena, reason, field: :object_id, value: id)}
    end
  end

  @doc false
  @spec os_pid() :: pos_integer()
  def os_pid, do: String.to_integer(System.pid())

  defp round_up(n, to), do: div(n + to - 1, to) * to

  defp nif(:ok), do: :ok
  defp nif({:ok, _} = ok), do: ok
  defp nif({:error, reason}), do: {:error, Error.new(:arena, reason)}

  defp badarg(field, value, expected),
    do: Error.new(:bad_call, :badarg, field: field, value: value, limit: expected)
end
