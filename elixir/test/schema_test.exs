defmodule Bridge.SchemaTest do
  # Typed schemas (protocol/formats/ssz.md) on the Elixir side: the golden vectors of
  # protocol/vectors/ssz (written by the Python side) are the bytes of the seed's four
  # containers declared here (alone, and batches of them), read back to their values;
  # bad ones are typed errors.
  use ExUnit.Case, async: true

  import Bridge.Test.SSZJSON, only: [type_json: 1, value: 2]

  doctest Bridge.Schema

  @root Path.expand("../../protocol/vectors/ssz", __DIR__)
  @vectors @root |> Path.join("*.json") |> Path.wildcard() |> Enum.sort()
  for path <- @vectors, do: @external_resource(path)

  @modules %{
    "truthgpt.ModelConfig" => Seed.ModelConfig,
    "truthgpt.OptimizationConfig" => Seed.OptimizationConfig,
    "truthgpt.PerformanceMetrics" => Seed.PerformanceMetrics,
    "truthgpt.ModelInfo" => Seed.ModelInfo
  }

  test "the vectors hold the seed's four containers" do
    good = for p <- @vectors, Path.basename(p) =~ ~r/^good_/, do: json(p)["schema"]
    assert Enum.sort(Enum.uniq(good)) == Enum.sort(Map.keys(@modules))
  end

  for path <- @vectors do
    name = Path.basename(path, ".json")

    test "ssz #{name}" do
      doc = json(unquote(path))
      bin = File.read!(String.replace_suffix(unquote(path), ".json", ".ssz"))
      assert byte_size(bin) == doc["size"]
      module = Map.fetch!(@modules, doc["schema"])

      # the schemas the vector describes are the modules declared here
      for {schema, spec} <- doc["schemas"] do
        m = Map.fetch!(@modules, schema)
        assert m.__schema__(:version) == spec["version"]

        assert Enum.map(m.__schema__(:fields), fn {n, t} -> [Atom.to_string(n), type_json(t)] end) ==
                 spec["fields"]
      end

      cond do
        doc["batch"] and doc["valid"] ->
          # a batch (formats/ssz.md, "Batches"): the SSZ list of its values
          values = Enum.map(doc["value"], &value(module, &1))
          assert Bridge.Schema.Batch.encode(module, values) == {:ok, bin}
          assert Bridge.Schema.Batch.decode(module, bin) == {:ok, values}

        doc["batch"] ->
          assert {:error, %Bridge.Error{reason: reason}} = Bridge.Schema.Batch.decode(module, bin)
          assert Atom.to_string(reason) == doc["error"]["reason"]

        doc["valid"] ->
          value = value(module, doc["value"])
          assert Bridge.Schema.to_ssz(value) == {:ok, bin}
          assert Bridge.Schema.from_ssz(module, bin) == {:ok, value}

        true ->
          assert {:error, %Bridge.Error{reason: reason}} = Bridge.Schema.from_ssz(module, bin)
          assert Atom.to_string(reason) == doc["error"]["reason"]
      end
    end
  end

  test "a value that does not fit names the field path" do
    metrics =
      struct(Seed.PerformanceMetrics,
        step: 1,
        loss: 0.5,
        accuracy: 1,
        tokens_per_second: 2.0,
        latency_ms: [1, 2, 3],
        memory_bytes: 0,
        gpu_utilization: 256,
        delta: 0
      )

    info = struct(Seed.ModelInfo, config: nil, metrics: [metrics])

    assert {:error, e} =
             Bridge.Schema.to_ssz(%{info | config: struct(Seed.ModelConfig, name: "x")})

    assert e.reason == :bad_value and e.message =~ "ModelInfo.config.hidden_size is nil"

    assert {:error, e} = Bridge.Schema.to_ssz(metrics)

    assert e.message ==
             "bad_value: PerformanceMetrics.gpu_utilization is 256, expected uint8 (0 to 255)"

    long =
      struct(Seed.ModelConfig,
        name: "x",
        hidden_size: 1,
        num_heads: 1,
        layers: List.duplicate(1, 1025),
        vocab_size: 1,
        dropout: 0.0,
        tie_embeddings: false
      )

    assert {:error, e} = Bridge.Schema.to_ssz(long)
    assert e.message =~ "ModelConfig.layers has 1025 elements"
  end

  test "field types are checked when the module compiles" do
    assert_raise ArgumentError, ~r/does not nest unions/, fn ->
      Code.compile_string("""
      defmodule Seed.Bad do
        use Bridge.Schema, name: "seed.Bad", version: "1.0"
        field :x, {:optional, {:optional, :uint8}}
      end
      """)
    end

    assert_raise ArgumentError, ~r/major.minor/, fn ->
      Code.compile_string("""
      defmodule Seed.BadVersion do
        use Bridge.Schema, name: "seed.BadVersion", version: "2"
      end
      """)
    end
  end

  defp json(path), do: path |> File.read!() |> Bridge.JSON.decode!()
end
