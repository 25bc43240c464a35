defmodule Bridge.ArenaTest do
  # Transport v2 objects on the BEAM side (protocol/SPEC.md), in one OS
  # process: the node reads its own arenas through the peer path
  # (/proc/<own pid>/fd/<n>, read-only), which is exactly what a worker does.
  # Not async: the descriptor and mapping counts below are of the whole OS process.
  use ExUnit.Case, async: false

  alias Bridge.{Arena, Header, LeaseTable, NIF, Peer}

  @mib 1024 * 1024

  doctest Bridge.Arena
  doctest Bridge.LeaseTable

  defp arena!(opts \\ []) do
    {:ok, arena} = Arena.new(Keyword.merge([limit: 64 * @mib, min_arena: 1 * @mib], opts))
    on_exit(fn -> Arena.close(arena) end)
    arena
  end

  defp peer!(arena, id) do
    {:ok, announcement} = Arena.announcement(arena, id)
    {:ok, peer} = Peer.open(announcement)
    peer
  end

  defp gc_and_wait(fun, tries \\ 50) do
    :erlang.garbage_collect()

    cond do
      fun.() -> :ok
      tries == 0 -> flunk("condition never held")
      true -> Process.sleep(10) && gc_and_wait(fun, tries - 1)
    end
  end

  test "a frame written into a slice reads back through a read-only peer mapping" do
    arena = arena!()
    payload = :crypto.strong_rand_bytes(100_000)
    {:ok, s} = Arena.put(arena, payload, format: :tensor, metadata: "meta", checksum: true)
    assert rem(s.offset, 64) == 0 and s.offset >= 64 and rem(s.length, 64) == 0

    peer = peer!(arena, s.arena_id)
    {:ok, lease} = Peer.lease(peer, s.offset, s.length, nil, nil)
    {:ok, frame} = Peer.read_frame(lease, s.length, s.generation, verify: true)
    assert frame.payload == payload
    assert frame.metadata == "meta"
    assert frame.header.generation == s.generation
    assert frame.header.format == 1
    assert band_flag(frame.header.flags)

    # the payload binary points into the shared mapping, no copy
    {:ok, addr} = NIF.binary_address(frame.payload)
    {:ok, copy_addr} = NIF.binary_address(:binary.copy(frame.payload))
    assert addr != copy_addr
  end

  defp band_flag(flags), do: Bitwise.band(flags, 1) == 1

  test "a handle with another generation is stale; bounds come from the object" do
    arena = arena!()
    {:ok, s} = Arena.put(arena, "abc", [])
    peer = peer!(arena, s.arena_id)
    {:ok, lease} = Peer.lease(peer, s.offset, s.length, nil, nil)
    assert {:error, %{reason: :stale_generation}} = Peer.read_frame(lease, s.length, 12_345)

    {:ok, {_id, _kind, size, _leases, _leased}} = NIF.peer_info(peer)
    assert {:error, %{reason: :slice_out_of_bounds}} = Peer.lease(peer, size - 64, 128, nil, nil)
    assert {:error, %{reason: :slice_out_of_bounds}} = Peer.lease(peer, 0, 128, nil, nil)
    assert {:error, %{reason: :slice_out_of_bounds}} = Peer.lease(peer, 96, 128, nil, nil)
    assert {:error, %{reason: :slice_out_of_bounds}} = Peer.lease(peer, 64, 64, nil, nil)
  end

  test "10,000 slices cost slices, not descriptors or mappings" do
    {:ok, fds_before} = NIF.fd_count()
    maps_before = mappings()
    arena = arena!(limit: 256 * @mib)

    slices =
      for i <- 1..10_000 do
        {:ok, s} = Arena.put(arena, :binary.copy(<<rem(i, 256)>>, 1000), [])
        s
      end

    {:ok, stats} = Arena.stats(arena)
    assert stats.live == 10_000
    assert stats.arenas <= 16
    {:ok, fds} = NIF.fd_count()
    assert fds - fds_before <= 16
    assert mappings() - maps_before <= 16

    # every slice distinct and intact
    assert slices |> Enum.map(&{&1.arena_id, &1.offset}) |> Enum.uniq() |> length() == 10_000
    {:ok, <<7>>} = Arena.read(Enum.at(slices, 6), 128, 1)

    Enum.each(slices, &Arena.release/1)
    {:ok, stats} = Arena.stats(arena)
    assert stats.live == 0 and stats.used == 0
  end

  # Mappings of shared objects (memfds) in this OS process.
  defp mappings,
    do: "/proc/self/maps" |> File.read!() |> String.split("\n") |> Enum.count(&(&1 =~ "memfd:"))

  test "a value bigger than the limit is refused at once, naming :arena_limit" do
    arena = arena!(limit: 4 * @mib)
    {:error, e} = Arena.put(arena, :binary.copy("x", 5 * @mib), [])
    assert {e.kind, e.reason, e.field} == {:arena, :too_large, :arena_limit}
    assert e.message =~ "raise :arena_limit"
    refute Arena.fits?(4 * @mib, 5 * @mib, 0)
    assert Arena.fits?(4 * @mib, 3 * @mib, 0)
  end

  test "a full set says arena_full while slices are live, and recovers when they go" do
    arena = arena!(limit: 4 * @mib, min_arena: 1 * @mib)
    value = :binary.copy("x", 900_000)

    held =
      Enum.reduce_while(1..10, [], fn _, acc ->
        case Arena.put(arena, value, []) do
          {:ok, s} -> {:cont, [s | acc]}
          {:error, e} -> {:halt, {acc, e}}
        end
      end)

    assert {[_, _, _ | _] = held, e} = held
    assert {e.reason, e.field} == {:arena_full, :arena_limit}
    {:ok, %{bytes: bytes}} = Arena.stats(arena)
    assert bytes <= 4 * @mib
    Enum.each(held, &Arena.release/1)
    assert {:ok, _} = Arena.put(arena, value, [])
  end

  test "callers that find no room at once make one arena between them, not one each" do
    # 64 processes put 2 MB each at the same moment into a fresh set: they grow it one
    # at a time, and each grower first uses the room the one before it made
    arena = arena!(limit: 1024 * @mib, min_arena: 8 * @mib)
    value = :binary.copy("c", 2_000_000)
    parent = self()

    pids =
      for _ <- 1..64 do
        spawn_link(fn ->
          send(parent, {:put, self(), Arena.put(arena, value, [])})
          receive do: (:done -> :ok)
        end)
      end

    results = for pid <- pids, do: receive(do: ({:put, ^pid, r} -> r))

    outcomes =
      Enum.frequencies_by(results, fn
        {:ok, _} -> :ok
        {:error, e} -> e.reason
      end)

    assert outcomes == %{ok: 64}

    {:ok, stats} = Arena.stats(arena)
    assert stats.live == 64
    # 128 MB in use: arenas of 8, 16, 32, 64 and 128 MiB, nothing dropped on the way
    assert stats.bytes <= 4 * stats.used, inspect(stats)
    assert stats.drops == 0 and stats.grows <= 8, inspect(stats)
    Enum.each(pids, &send(&1, :done))
    for {:ok, s} <- results, do: Arena.release(s)
  end

  test "a lent slice is not reused until it returns; a stale handle cannot lend it again" do
    arena = arena!()
    {:ok, s} = Arena.put(arena, "lent", [])
    :ok = Arena.lend(s)
    assert {:error, %{reason: :in_use}} = Arena.lend(s)
    :ok = Arena.release(s)
    {:ok, %{live: 1}} = Arena.stats(arena)
    :ok = Arena.return(s)
    {:ok, %{live: 0}} = Arena.stats(arena)
    assert {:error, %{reason: :released}} = Arena.lend(s)
    assert {:error, %{reason: :released}} = Arena.read(s, 0, 4)
  end

  test "a zero-copy binary of a slice keeps it allocated after every other hold ends" do
    arena = arena!()
    {:ok, s} = Arena.put(arena, "pinned bytes", [])
    {:ok, bin} = Arena.binary(s, 128, 12)
    :ok = Arena.release(s)
    {:ok, %{live: 1}} = Arena.stats(arena)
    assert bin == "pinned bytes"

    # the binary lives in another process; only its collection frees the slice
    parent = self()

    pid =
      spawn(fn ->
        receive do
          :go -> send(parent, {:len, byte_size(bin)})
        end
      end)

    send(pid, :go)
    assert_receive {:len, 12}
    bin = nil
    _ = bin
    gc_and_wait(fn -> match?({:ok, %{live: 0}}, Arena.stats(arena)) end)
  end

  test "a lease's end stores its generation at its ticket in the lease table" do
    arena = arena!()
    {:ok, table} = LeaseTable.new(8)
    {:ok, s} = Arena.put(arena, "for the table", [])
    peer = peer!(arena, s.arena_id)

    {:ok, lease} = Peer.lease(peer, s.offset, s.length, table, {5, s.generation})
    assert LeaseTable.word(table, 5) == 0
    :ok = Peer.release(lease)
    assert LeaseTable.word(table, 5) == s.generation

    # a binary holds the lease until it is collected (made in a function of its
    # own, so no stack slot of this one keeps it)
    assert read_with_ticket(peer, s, table, 6) == "for the table"
    gc_and_wait(fn -> LeaseTable.word(table, 6) == s.generation end)

    assert {:error, _} = Peer.lease(peer, s.offset, s.length, table, {8, 1})
  end

  defp read_with_ticket(peer, s, table, ticket) do
    {:ok, lease} = Peer.lease(peer, s.offset, s.length, table, {ticket, s.generation})
    {:ok, frame} = Peer.read_frame(lease, s.length, s.generation)
    assert {:error, %{reason: :in_use}} = Peer.release(lease)
    assert LeaseTable.word(table, ticket) == 0
    :binary.copy(frame.payload)
  end

  test "a closed peer mapping goes when its last lease ends, whoever still refers to it" do
    arena = arena!()
    {:ok, s} = Arena.put(arena, "closing", [])
    before = mappings()
    peer = peer!(arena, s.arena_id)
    assert mappings() == before + 1
    assert read_after_close(peer, s) == "closing"
    # the lease is gone (collected): the mapping goes although `peer` is still here
    gc_and_wait(fn -> mappings() == before end)
    assert {:error, %{reason: :closed}} = Peer.lease(peer, s.offset, s.length, nil, nil)
  end

  defp read_after_close(peer, s) do
    {:ok, lease} = Peer.lease(peer, s.offset, s.length, nil, nil)
    :ok = Peer.close(peer)
    assert {:error, %{reason: :closed}} = Peer.lease(peer, s.offset, s.length, nil, nil)
    # the lease still reads; the mapping stays while it lives
    {:ok, frame} = Peer.read_frame(lease, s.length, s.generation)
    :binary.copy(frame.payload)
  end

  test "trim drops empty idle arenas beyond what it keeps" do
    arena = arena!(limit: 64 * @mib, min_arena: 1 * @mib)

    slices =
      for _ <- 1..6 do
        {:ok, s} = Arena.put(arena, :binary.copy("z", 900_000), [])
        s
      end

    {:ok, %{arenas: n, bytes: bytes}} = Arena.stats(arena)
    assert n > 1
    assert {:ok, []} = Arena.trim(arena, 0, 0)
    Enum.each(slices, &Arena.release/1)
    {:ok, dropped} = Arena.trim(arena, 0, 1 * @mib)
    assert length(dropped) == n - 1
    {:ok, %{arenas: 1, bytes: left}} = Arena.stats(arena)
    assert left == 1 * @mib and left < bytes
  end

  test "a big value gets an arena of about its own size" do
    arena = arena!(limit: 1024 * @mib, min_arena: 8 * @mib)
    big = :binary.copy("b", 64 * @mib)
    {:ok, a} = Arena.put(arena, big, [])
    {:ok, b} = Arena.put(arena, big, [])
    {:ok, %{bytes: bytes, arenas: 2}} = Arena.stats(arena)
    assert bytes <= 2 * (64 * @mib + @mib)
    # both held to here (a slice nothing refers to may be collected, and its room reused)
    Enum.each([a, b], &Arena.release/1)
  end

  test "peer_open refuses what is not the announced sealed object" do
    arena = arena!()
    {:ok, s} = Arena.put(arena, "x", [])
    {:ok, {:object, :arena, pid, fd, id, size, nonce}} = Arena.announcement(arena, s.arena_id)

    assert {:error, %{reason: :bad_object, field: :nonce}} =
             Peer.open({:object, :arena, pid, fd, id, size, nonce + 1})

    assert {:error, %{reason: :bad_object, field: :object_id}} =
             Peer.open({:object, :arena, pid, fd, id + 1000, size, nonce})

    assert {:error, %{reason: :bad_object, field: :kind}} =
             Peer.open({:object, :lease_table, pid, fd, id, size, nonce})

    assert {:error, %{reason: :size_mismatch}} =
             Peer.open({:object, :arena, pid, fd, id, size + 4096, nonce})

    assert {:error, %{reason: :not_sealed}} =
             Peer.open({:object, :sealed, pid, fd, id, size, nonce})

    assert {:error, %{reason: :peer_open_failed}} =
             Peer.open({:object, :arena, pid, 100_000, id, size, nonce})

    assert {:error, %{reason: :bad_term}} = Peer.open({:object, :nope})
  end

  test "the payload checksum is written only when asked, and checked on read" do
    arena = arena!()
    {:ok, s} = Arena.put(arena, "no sum", [])
    {:ok, head} = Arena.read(s, 0, 128)
    {:ok, h} = Header.parse(head, s.length)
    assert h.payload_checksum == 0 and Bitwise.band(h.flags, 1) == 0
  end

  test "many processes allocate and write at once" do
    arena = arena!(limit: 128 * @mib)

    results =
      1..8
      |> Enum.map(fn i ->
        Task.async(fn ->
          for j <- 1..500 do
            data = :binary.copy(<<i, rem(j, 256)>>, 3000)
            {:ok, s} = Arena.put(arena, data, [])
            {:ok, ^data} = Arena.read(s, 128, 6000)
            s
          end
        end)
      end)
      |> Enum.flat_map(&Task.await(&1, 30_000))

    assert results |> Enum.map(&{&1.arena_id, &1.offset}) |> Enum.uniq() |> length() == 4000
    Enum.each(results, &Arena.release/1)
    {:ok, %{live: 0}} = Arena.stats(arena)
  end
end
