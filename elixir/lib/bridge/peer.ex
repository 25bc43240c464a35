defmodule Bridge.Peer do
  @moduledoc """
  A worker's shared objects as this node sees them: mapped read-only, and
  leases on their slices (protocol/SPEC.md §2, §4).

  `open/1` takes an announcement `{:object, kind, owner_pid, fd, id, size,
  nonce}`, opens `/proc/<owner_pid>/fd/<fd>` read-only, checks that the object
  is sealed against resizing (and against writing, for kind `:sealed`) and that
  its header matches the announcement, and maps it `PROT_READ`. Nothing the
  owner does afterwards (truncating, growing) can make a read fault.

  A lease on a slice ends when the last binary read from it is collected (or at
  `release/1` if none was made): for an arena's slice the slice's generation is
  then stored into the lease table at the slice's ticket, which tells the owner
  it may reuse the slice.
  """

  import Bitwise

  alias Bridge.{Error, Frame, Header, NIF, Provenance}

  @kinds %{arena: 0, sealed: 1, lease_table: 2}

  @typedoc "A mapping of a peer's object."
  @type t :: reference()
  @typedoc "A lease on one slice of a peer's object."
  @type lease :: reference()

  @doc """
  Opens and maps a peer's object. Errors (kind `:arena`): `:peer_open_failed`
  (the errno in `value`), `:size_mismatch`, `:not_sealed`, `:bad_object`
  (naming the header field that disagrees with the announcement).
  """
  @spec open(tuple()) :: {:ok, t()} | {:error, Error.t()}
  def open({:object, kind, owner_pid, fd, id, size, nonce} = announcement)
      when is_map_key(@kinds, kind) and is_integer(owner_pid) and is_integer(fd) and
             is_integer(id) and is_integer(size) and is_integer(nonce) do
    case NIF.peer_open(owner_pid, fd, Map.fetch!(@kinds, kind), id, size, nonce) do
      {:ok, ref} ->
        {:ok, ref}

      {:error, {:peer_open_failed, errno}} ->
        {:error,
         Error.new(:arena, :peer_open_failed,
           field: :fd,
           value: errno,
           message:
             "arena error: peer_open_failed: cannot open /proc/#{owner_pid}/fd/#{fd} " <>
               "(errno #{errno}); the peer must run as the same user and be able to read " <>
               "the owner's /proc entries"
         )}

      {:error, {:bad_object, field}} ->
        {:error, Error.new(:arena, :bad_object, field: field, value: announcement)}

      {:error, reason} ->
        {:error, Error.new(:arena, reason, field: :object, value: announcement)}
    end
  end

  def open(other),
    do:
      {:error,
       Error.new(:bad_frame, :bad_term,
         field: :object,
         value: other,
         limit: "{:object, kind, owner_pid, fd, id, size, nonce}"
       )}

  @doc """
  A lease on the slice `[offset, offset + length)` of `peer`. `table` is this
  node's lease table for the worker and `ticket_generation` the `{ticket,
  generation}` the worker sent, or both `nil` for a sealed object.
  """
  @spec lease(t(), non_neg_integer(), pos_integer(), reference() | nil, tuple() | nil) ::
          {:ok, lease()} | {:error, Error.t()}
  def lease(peer, offset, length, table, ticket_generation) do
    case NIF.peer_lease(peer, offset, length, table, ticket_generation) do
      {:ok, lease} ->
        {:ok, lease}

      {:error, reason} ->
        {:error,
         Error.new(:bad_frame, reason, field: :slice, value: {offset, length, ticket_generation})}
    end
  end

  @doc """
  Reads the frame at the start of a leased slice of `length` bytes whose handle
  said `generation`: header and metadata are copied and validated
  (protocol/SPEC.md §6, the slice's length as the frame size), then the payload
  is a zero-copy binary that holds the lease. Options: `:verify` (check the
  payload checksum, default `false`), `:copy` (a private copy of the payload,
  the lease ends at once; default `false`).
  """
  @spec read_frame(lease(), pos_integer(), non_neg_integer(), keyword()) ::
          {:ok, Frame.t()} | {:error, Error.t()}
  def read_frame(lease, length, generation, opts \\ []) do
    result =
      with :ok <- check_opts(opts),
           {:ok, head} <- copy(lease, 0, min(128, length)),
           {:ok, head} <- with_metadata(lease, head, length),
           {:ok, h} <- Header.parse(head, length),
           :ok <- check_generation(h, generation),
           :ok <- stored_meta(lease, h, head),
           {:ok, payload} <- payload(lease, h, opts) do
        {:ok,
         %Frame{header: h, metadata: binary_part(head, 128, h.metadata_length), payload: payload}}
      end

    with {:error, _} <- result, do: release_quietly(lease, result)
  end

  defp check_opts(opts) do
    with true <- is_list(opts) and Keyword.keyword?(opts),
         true <- is_boolean(Keyword.get(opts, :verify, false)),
         true <- is_boolean(Keyword.get(opts, :copy, false)) do
      :ok
    else
      _ ->
        {:error,
         Error.new(:bad_call, :badarg,
           field: :opts,
           value: opts,
           limit: "a keyword list of verify: boolean, copy: boolean"
         )}
    end
  end

  defp release_quietly(lease, result) do
    _ = NIF.peer_lease_release(lease)
    result
  end

  defp with_metadata(lease, <<_::binary-size(36), mlen::little-32, _::binary>> = head, length)
       when mlen <= 1_048_576 and 128 + mlen <= length and mlen > 0 do
    with {:ok, meta} <- copy(lease, 128, mlen), do: {:ok, head <> meta}
  end

  defp with_metadata(_lease, head, _length), do: {:ok, head}

  # SPEC §5.4: a frame with HOLDS_META holds its call's meta for the frames
  # after it; it is kept (Bridge.Provenance.Stored). A block that does not read
  # keeps nothing and fails nothing: the payload is what was asked for.
  @holds_meta Header.flag_holds_meta()
  defp stored_meta(lease, %Header{flags: flags, provenance_length: n} = h, head)
       when (flags &&& @holds_meta) != 0 and n > 0 do
    start = 128 + h.metadata_length

    with true <- start + n <= h.payload_offset,
         {:ok, block} <- copy(lease, start, n),
         {:ok, %Provenance{}} <- Provenance.read(h, head <> block) do
      :ok
    end

    :ok
  end

  defp stored_meta(_lease, _h, _head), do: :ok

  defp check_generation(%Header{generation: g}, g), do: :ok

  defp check_generation(%Header{generation: g}, expected),
    do:
      {:error,
       Error.new(:bad_frame, :stale_generation, field: :generation, value: g, limit: expected)}

  defp payload(lease, %Header{payload_length: 0}, _opts) do
    _ = NIF.peer_lease_release(lease)
    {:ok, ""}
  end

  defp payload(lease, h, opts) do
    with {:ok, payload} <- payload_bytes(lease, h, Keyword.get(opts, :copy, false)),
         :ok <- verify(h, payload, Keyword.get(opts, :verify, false)) do
      {:ok, payload}
    end
  end

  defp payload_bytes(lease, h, false),
    do: nif(NIF.peer_lease_binary(lease, h.payload_offset, h.payload_length))

  defp payload_bytes(lease, h, true) do
    with {:ok, bin} <- copy(lease, h.payload_offset, h.payload_length) do
      _ = NIF.peer_lease_release(lease)
      {:ok, bin}
    end
  end

  defp verify(_h, _payload, false), do: :ok
  defp verify(h, payload, true), do: Header.verify_payload(h, payload)

  defp copy(lease, off, len), do: nif(NIF.peer_lease_read(lease, off, len))

  @doc """
  The owner dropped the object (or died): the mapping goes as soon as no lease
  on it is left, now or when the last one ends, whoever still refers to `peer`.
  No new lease can be taken.
  """
  @spec close(t()) :: :ok
  def close(peer), do: NIF.peer_close(peer)

  @doc "Ends a lease no binary was made from (else the binaries' collection ends it)."
  @spec release(lease()) :: :ok | {:error, Error.t()}
  def release(lease), do: nif(NIF.peer_lease_release(lease))

  defp nif(:ok), do: :ok
  defp nif({:ok, _} = ok), do: ok
  defp nif({:error, reason}), do: {:error, Error.new(:bad_frame, reason, field: :slice)}
end
