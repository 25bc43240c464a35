# The main job until the call path exists (issue 3 replaces it): Elixir creates a region,
# writes a 64 MiB frame into it, and a Python process attaches and reads the payload in
# place (no copy), verifying its xxh3-64 checksum.
#
#   make demo                                  # sets everything up, then runs this
#   MIX_ENV=test mix run bench/demo.exs [MiB]
alias Bridge.Region

mib =
  case System.argv() do
    [n] -> String.to_integer(n)
    [] -> 64
  end

size = mib * 1024 * 1024
python = Path.expand(".venv/bin/python")
payload = :binary.copy(<<0::8, 1, 2, 3, 4, 5, 6, 7>>, div(size, 8))

{create_us, region} = :timer.tc(fn -> Region.create_for_frame!(size, metadata_length: 11) end)

{write_us, header} =
  :timer.tc(fn -> Region.write_frame!(region, payload, metadata: "demo v1 raw") end)

IO.puts("""
Elixir: created #{region.name} (#{region.size} bytes, pages reserved) in #{div(create_us, 1000)} ms
Elixir: wrote a #{mib} MiB frame (generation #{header.generation}, xxh3 #{Integer.to_string(header.payload_checksum, 16)}) in #{div(write_us, 1000)} ms
""")

{out, status} = System.cmd(python, ["bench/demo_read.py", region.name], stderr_to_stdout: true)
IO.write(out)
Region.close!(region)
IO.puts("Elixir: closed and unlinked #{region.name}")
if status != 0, do: System.halt(status)
