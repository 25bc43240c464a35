# The BEAM's half of tests/cross/test_ssz_cross.py (MIX_ENV=test mix run
# tests/cross/ssz_peer.exs FILE): FILE holds cases, each a schema drawn by the Python
# side (JSON of protocol/vectorgen/ssz.py), a value of it and Python's bytes. For
# each case this compiles the schema modules, writes the value, reads Python's bytes
# back and writes them again, and prints one line: name, our hex, and whether the
# value read back equals the one written. Then, through Bridge.call to a worker that
# declared the same schemas (tests/python/handlers/bbtest_ssz.py), each value and a
# list of three of it go there and back, and one line says whether they came back the
# same: "CALL i true".
[file] = System.argv()
cases = file |> File.read!() |> Bridge.JSON.decode!()

{:ok, sup} =
  Bridge.start_link(
    name: SSZPeerBridge,
    python: Path.expand(".venv/bin/python"),
    python_path: [Path.expand("tests/python/handlers"), Path.expand("tests/python")],
    pool_size: 1,
    timeout: 60_000
  )

{:ok, _} = Bridge.call({:bbtest_ssz, :declare}, [File.read!(file)], pool: SSZPeerBridge)

for {c, i} <- Enum.with_index(cases) do
  made = Bridge.Test.SSZJSON.define(c["schemas"], :"Cross#{i}")
  module = Map.fetch!(made, c["schema"])
  value = Bridge.Test.SSZJSON.value(module, c["value"])
  {:ok, ours} = Bridge.Schema.to_ssz(value)
  {:ok, read} = Bridge.Schema.from_ssz(module, Base.decode16!(c["hex"], case: :lower))
  {:ok, again} = Bridge.Schema.to_ssz(read)
  same = if c["floats"], do: again == ours, else: read == value and again == ours
  IO.puts("CASE #{i} #{Base.encode16(ours, case: :lower)} #{same}")

  hex = Base.encode16(ours, case: :lower)
  echo = fn v -> Bridge.call({:bbtest_ssz, :echo}, [v, c["schema"], hex], pool: SSZPeerBridge) end
  ssz = fn v -> elem(Bridge.Schema.to_ssz(v), 1) end

  back =
    with {:ok, one} <- echo.(value),
         {:ok, [_, _, _] = three} <- echo.([value, value, value]) do
      Enum.all?([one | three], &(&1.__struct__ == module and ssz.(&1) == ours))
    end

  IO.puts("CALL #{i} #{inspect(back == true)} #{if back != true, do: inspect(back)}")
end

Supervisor.stop(sup)
