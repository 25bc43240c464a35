# `make demo`: Elixir writes a 64 MiB frame into a slice of an arena (sealed,
# anonymous shared memory), and a Python process opens that arena read-only through
# /proc/<pid>/fd and reads the payload in place (no copy), verifying its xxh3-64.
#
#   make demo                                  # sets everything up, then runs this
#   MIX_ENV=test mix run bench/demo.exs [MiB]
alias Bridge.Arena

mib =
  case System.argv() do
    [n] -> String.to_integer(n)
    [] -> 64
  end

size = mib * 1024 * 1024
python = Path.expand(".venv/bin/python")
payload = :binary.copy(<<0::8, 1, 2, 3, 4, 5, 6, 7>>, div(size, 8))
{:ok, arena} = Arena.new(limit: size + 16 * 1024 * 1024)

{write_us, {:ok, slice}} =
  :timer.tc(fn -> Arena.put(arena, payload, metadata: "demo v2 raw", checksum: true) end)

{:ok, {:object, :arena, pid, fd, id, arena_size, nonce}} =
  Arena.announcement(arena, slice.arena_id)

IO.puts("""
Elixir: wrote a #{mib} MiB frame into slice #{slice.offset}+#{slice.length} of arena #{id} \
(#{arena_size} bytes, fd #{fd}, generation #{slice.generation}) in #{div(write_us, 1000)} ms, \
arena created and its pages reserved on the way\
""")

args =
  Enum.map(
    [pid, fd, id, arena_size, nonce, slice.offset, slice.length, slice.generation],
    &to_string/1
  )

{out, status} = System.cmd(python, ["bench/demo_read.py" | args], stderr_to_stdout: true)
IO.write(out)
Arena.release(slice)
Arena.close(arena)

IO.puts(
  "Elixir: released the slice and closed the arena (the kernel frees it: nothing was named)"
)

if status != 0, do: System.halt(status)
