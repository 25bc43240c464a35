# The BEAM's half of tests/cross/test_ssz_cross.py (MIX_ENV=test mix run
# tests/cross/ssz_peer.exs FILE): FILE holds cases, each a schema drawn by the Python
# side (JSON of protocol/vectorgen/ssz.py), a value of it and Python's bytes. For
# each case this compiles the schema modules, writes the value, reads Python's bytes
# back and writes them again, and prints one line: name, our hex, and whether the
# value read back equals the one written.
[file] = System.argv()
cases = file |> File.read!() |> Bridge.JSON.decode!()

for {c, i} <- Enum.with_index(cases) do
  made = Bridge.Test.SSZJSON.define(c["schemas"], :"Cross#{i}")
  module = Map.fetch!(made, c["schema"])
  value = Bridge.Test.SSZJSON.value(module, c["value"])
  {:ok, ours} = Bridge.Schema.to_ssz(value)
  {:ok, read} = Bridge.Schema.from_ssz(module, Base.decode16!(c["hex"], case: :lower))
  {:ok, again} = Bridge.Schema.to_ssz(read)
  same = if c["floats"], do: again == ours, else: read == value and again == ours
  IO.puts("CASE #{i} #{Base.encode16(ours, case: :lower)} #{same}")
end
