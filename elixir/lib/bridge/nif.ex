defmodule Bridge.NIF do
  @moduledoc false
  # Stubs for the NIF in shm/ (beambridge_nif.c; the shared objects in objects.c,
  # arena_set.c, slices.c, lease_table.c, peer.c and lane.c). Every function returns
  # {:ok, value} | :ok | {:error, reason}; wrong argument types are
  # {:error, :badarg}, never a raise. Offsets and lengths are in bytes.

  @on_load :load_nif

  def load_nif do
    path = :filename.join(:code.priv_dir(:beambridge), ~c"beambridge_nif")

    case :erlang.load_nif(path, 0) do
      :ok ->
        :ok

      {:error, {_reason, text}} = error ->
        :logger.error(~c"~ts", [load_failed(List.to_string(text))])
        error
    end
  end

  # Runtime libraries the NIF links, by the Debian packages that provide them.
  @runtime_packages [
    {"libxxhash", "libxxhash0"},
    {"libzstd", "libzstd1"},
    {"liblz4", "liblz4-1"},
    {"libz.so", "zlib1g"}
  ]

  @doc false
  # What to do about a NIF that did not load.
  @spec load_failed(String.t()) :: String.t()
  def load_failed(text) do
    hint =
      case for({lib, package} <- @runtime_packages, text =~ lib, do: package) do
        [] ->
          "rebuild it with `mix deps.compile beambridge --force`; it links libxxhash, " <>
            "libzstd, liblz4 and zlib (Debian: apt install libxxhash0 libzstd1 liblz4-1 zlib1g)"

        packages ->
          "install the runtime libraries it links; on Debian or Ubuntu: apt install " <>
            Enum.join(packages, " ")
      end

    "beambridge: the NIF could not be loaded (#{String.trim(text)}): #{hint}"
  end

  defp not_loaded, do: :erlang.nif_error(:nif_not_loaded)

  # A name an earlier version left in /dev/shm (Bridge.Reaper).
  def unlink(_name), do: not_loaded()
  def euid, do: not_loaded()
  def kill(_os_pid, _signal), do: not_loaded()
  # A resource that sends {:bridge_ref_gone, session, ref} to the pid when it is
  # garbage-collected (a %Bridge.Ref{}'s watch, SPEC §8.9).
  def watch_new(_pid, _session, _ref), do: not_loaded()
  # Where a binary's bytes live (tests check zero-copy binaries with it).
  def binary_address(_binary), do: not_loaded()
  def xxh3_64(_binary), do: not_loaded()
  # One zstd frame into a binary of exactly expected_size bytes (<= 2^32); the
  # frame's declared content size is checked before allocating. Errors: :badarg,
  # :too_large, :size_mismatch, :bad_compressed_data, :enomem.
  def zstd_decompress(_frame, _expected_size), do: not_loaded()
  # Payload codecs (codecs.c; Bridge.Codec). One frame of :lz4_frame, :zstd or :gzip
  # from a binary, of exactly the compressed size; level 0 is the codec's fast
  # default. Errors: :badarg (unknown codec, level out of range), :enomem.
  def codec_compress(_codec, _binary, _level), do: not_loaded()
  # One frame that is the whole binary into exactly decoded_length bytes (<= 2^32).
  # What the data declares (LZ4 and zstd content size, gzip ISIZE) is checked
  # before allocating. Errors: :badarg, :too_large, :size_mismatch,
  # :bad_compressed_data (corrupt, truncated, trailing bytes, another length), :enomem.
  def codec_decompress(_codec, _binary, _decoded_length), do: not_loaded()

  # Shared objects (protocol/SPEC.md §1-§4). Owned arenas and slices:
  def arena_set_new(_limit, _min_arena), do: not_loaded()
  def arena_set_close(_set), do: not_loaded()
  def arena_set_stats(_set), do: not_loaded()
  def arena_set_trim(_set, _idle_ms, _keep_bytes), do: not_loaded()
  def arena_grow(_set, _frame_len, _max_size), do: not_loaded()
  def arena_info(_set, _arena_id), do: not_loaded()
  def slice_alloc(_set, _frame_len), do: not_loaded()
  def slice_info(_slice), do: not_loaded()
  def slice_write_frame(_slice, _header, _metadata, _parts, _checksum), do: not_loaded()
  def slice_read(_slice, _off, _len), do: not_loaded()
  def slice_write(_slice, _off, _binary), do: not_loaded()
  def slice_release(_slice), do: not_loaded()
  def slice_lend(_slice), do: not_loaded()
  def slice_return(_slice), do: not_loaded()
  def slice_hold(_slice), do: not_loaded()
  def slice_unhold(_slice), do: not_loaded()
  def slice_binary(_slice, _off, _len), do: not_loaded()
  # Lease tables (this side ends leases on a worker's slices through one):
  def lease_table_new(_entries), do: not_loaded()
  def lease_table_info(_table), do: not_loaded()
  def lease_table_word(_table, _ticket), do: not_loaded()
  # A peer's objects, mapped read-only, and leases on their slices:
  def peer_open(_owner_pid, _fd, _kind, _id, _size, _nonce), do: not_loaded()
  def peer_info(_peer), do: not_loaded()
  def peer_close(_peer), do: not_loaded()
  def peer_lease(_peer, _offset, _length, _table, _ticket_generation), do: not_loaded()
  def peer_lease_read(_lease, _off, _len), do: not_loaded()
  def peer_lease_binary(_lease, _off, _len), do: not_loaded()
  def peer_frame_of(_binary, _whole), do: not_loaded()
  def peer_lease_release(_lease), do: not_loaded()
  def fd_count, do: not_loaded()
  # A worker's lane (SPEC §8.5; Bridge.Lane):
  def lane_new, do: not_loaded()
  def lane_info(_lane), do: not_loaded()
  def lane_layout, do: not_loaded()
  def lane_send(_lane, _batch), do: not_loaded()
  def lane_wait(_lane, _seq, _spin_us), do: not_loaded()
  def lane_take(_lane, _seq), do: not_loaded()
end
