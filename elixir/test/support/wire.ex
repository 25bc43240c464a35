defmodule Bridge.Test.Wire do
  @moduledoc false
  # The data-term forms without Python: arguments encoded as a caller would
  # (Bridge.Encoder into a fresh arena set), their slices read back through the
  # peer path; results decoded as a caller would (Bridge.Decoder), with slices
  # this process writes and leases itself, as a worker's would be.

  alias Bridge.{Arena, Decoder, Encoder, LeaseTable, Peer}

  @gib 1024 * 1024 * 1024

  # {:ok, terms, frames} where frames maps a handle index to {header, metadata,
  # payload copy}; {:error, error}.
  def encode(args, opts \\ [], threshold \\ 1_099_511_627_776) do
    {:ok, arena} = Arena.new(limit: @gib, min_arena: 1024 * 1024)

    try do
      case Encoder.encode_args(args, arena, threshold, opts) do
        {:ok, terms, slices} ->
          frames =
            for {s, i} <- Enum.with_index(slices), into: %{} do
              {i, read_back(arena, s)}
            end

          Enum.each(slices, &Arena.release/1)
          {:ok, terms, frames}

        {:error, error} ->
          {:error, error}
      end
    after
      Arena.close(arena)
    end
  end

  defp read_back(arena, s) do
    {:ok, announcement} = Arena.announcement(arena, s.arena_id)
    {:ok, peer} = Peer.open(announcement)
    {:ok, lease} = Peer.lease(peer, s.offset, s.length, nil, nil)
    {:ok, f} = Peer.read_frame(lease, s.length, s.generation, copy: true)
    {f.header, f.metadata, f.payload}
  end

  # A result term with no slices.
  def decode(term), do: Decoder.decode_result(term, {}, false)

  # A result handle of `kind` naming a slice this process wrote, as a worker would.
  def decode_slice(kind, payload, frame_opts) do
    {:ok, arena} = Arena.new(limit: @gib, min_arena: 1024 * 1024)
    {:ok, table} = LeaseTable.new(4)

    try do
      {:ok, s} = Arena.put(arena, payload, frame_opts)
      {:ok, announcement} = Arena.announcement(arena, s.arena_id)
      {:ok, peer} = Peer.open(announcement)
      {:ok, lease} = Peer.lease(peer, s.offset, s.length, table, {0, s.generation})
      resolved = {{:lease, lease, s.length, s.generation}}
      result = Decoder.decode_result({:"$bb_slice", kind, 0}, resolved, false)
      Arena.release(s)
      result
    after
      Arena.close(arena)
    end
  end
end
