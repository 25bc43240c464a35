# The BEAM's half of tests/cross/test_inspect_cross.py (MIX_ENV=test mix run
# tests/cross/inspect_peer.exs DIR): writes frames of its own into DIR (a result
# of a real worker call with meta:, dumped; a binary dumped as a fresh frame),
# then describes every DIR/*.frame, Python's too, into DIR/NAME.ex.json, as
# `mix beambridge.inspect` prints it.
[dir] = System.argv()

{:ok, _} =
  Bridge.start_link(
    name: InspectPeer,
    python: Path.expand(".venv/bin/python"),
    python_path: [Path.expand("elixir/test/handlers")],
    pool_size: 1,
    threshold: 1024
  )

{:ok, result} =
  Bridge.call({:bbt_provenance, :blob}, [20_000],
    pool: InspectPeer,
    meta: %{
      "round" => 12,
      "client" => "c7\x7f\x01",
      "é" => [1.5, "ü😀"],
      "floats" => [1.0e-5, 1.0e16, 1.0e15, -0.0, 123.456, 5.0e-324, 0.1]
    }
  )

{:ok, again} = Bridge.call({:bbt_provenance, :same}, [result], pool: InspectPeer)
:ok = Bridge.Frame.dump(again, Path.join(dir, "elixir_result.frame"))
:ok = Bridge.Frame.dump(:binary.copy("e", 5000), Path.join(dir, "elixir_fresh.frame"))
{:ok, tensor} = Bridge.call({:bbt_provenance, :tensor}, [3000], pool: InspectPeer)
:ok = Bridge.Frame.dump(tensor, Path.join(dir, "elixir_tensor.frame"))

for path <- Path.wildcard(Path.join(dir, "*.frame")) do
  out = String.replace_suffix(path, ".frame", ".ex.json")

  case Bridge.Frame.describe_file(path) do
    {:ok, d} -> File.write!(out, Bridge.Frame.Description.to_json(d))
    {:error, e} -> File.write!(out, "ERROR #{e.reason} #{e.field}")
  end
end

IO.puts("DESCRIBED")
