# The Elixir half of tests/cross/test_cross_arenas.py (protocol/SPEC.md).
#
#   mix run tests/cross/arena_peer.exs ANNOUNCEMENT SLICE...
#
# ANNOUNCEMENT is "arena:<pid>:<fd>:<id>:<size>:<nonce>" (a Python arena), each SLICE
# "<n>:<offset>:<length>:<generation>:<ticket>" (a frame of n pattern bytes in it).
# The BEAM maps the Python arena read-only, reads and checks every frame and keeps
# the zero-copy payloads, makes a lease table, prints "TABLE <pid> <fd> <id> <size>
# <nonce>", then an arena of its own with the same frames ("ARENA ..." and one
# "SLICE n offset length generation" each), then "READY". On the line "check" from
# stdin it compares the payloads it kept with the pattern ("KEPT true"), drops them,
# collects garbage (the lease table now holds each slice's generation), prints
# "RELEASED" and waits for "exit".
defmodule ArenaPeer do
  alias Bridge.{Arena, LeaseTable, Peer}

  def pattern(n),
    do:
      :binary.copy(:binary.list_to_bin(Enum.to_list(0..250)), div(n, 251) + 1)
      |> binary_part(0, n)

  def main([announcement | slices]) do
    ["arena" | nums] = String.split(announcement, ":")
    [pid, fd, id, size, nonce] = Enum.map(nums, &String.to_integer/1)
    {:ok, peer} = Peer.open({:object, :arena, pid, fd, id, size, nonce})
    {:ok, table} = LeaseTable.new(64)

    kept =
      for slice <- slices do
        [n, off, len, gen, ticket] = slice |> String.split(":") |> Enum.map(&String.to_integer/1)
        {:ok, lease} = Peer.lease(peer, off, len, table, {ticket, gen})
        {:ok, frame} = Peer.read_frame(lease, len, gen, verify: true)
        true = frame.payload == pattern(n)
        frame.payload
      end

    {:object, :lease_table, tpid, tfd, tid, tsize, tnonce} = LeaseTable.announcement(table)
    IO.puts("TABLE #{tpid} #{tfd} #{tid} #{tsize} #{tnonce}")

    {:ok, arena} = Arena.new(limit: 256 * 1024 * 1024, min_arena: 1024 * 1024)

    own =
      for slice <- slices do
        [n | _] = String.split(slice, ":")
        n = String.to_integer(n)
        {:ok, s} = Arena.put(arena, pattern(n), metadata: "size=#{n}", checksum: true)
        {n, s}
      end

    ids = own |> Enum.map(fn {_, s} -> s.arena_id end) |> Enum.uniq()

    for id <- ids do
      {:ok, {:object, :arena, apid, afd, ^id, asize, anonce}} = Arena.announcement(arena, id)
      IO.puts("ARENA #{apid} #{afd} #{id} #{asize} #{anonce}")
    end

    for {n, s} <- own,
        do: IO.puts("SLICE #{n} #{s.arena_id} #{s.offset} #{s.length} #{s.generation}")

    IO.puts("READY")
    "check" = IO.gets("") |> String.trim()

    same =
      Enum.zip(kept, slices)
      |> Enum.all?(fn {bin, slice} ->
        [n | _] = String.split(slice, ":")
        bin == pattern(String.to_integer(n))
      end)

    IO.puts("KEPT #{same}")
    release(kept)
    IO.puts("RELEASED")
    "exit" = IO.gets("") |> String.trim()
    Enum.each(own, fn {_, s} -> Arena.release(s) end)
    :ok
  end

  # Dropping the payloads is the only way a lease ends once a binary was made.
  defp release(_kept) do
    :erlang.garbage_collect()
    Process.sleep(20)
  end
end

System.argv() |> ArenaPeer.main()
