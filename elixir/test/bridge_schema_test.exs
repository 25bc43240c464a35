defmodule Calls.ModelConfig do
  @moduledoc false
  use Bridge.Schema, name: "calls.ModelConfig", version: "2.0"
  field(:name, :string)
  field(:hidden_size, :uint32)
  field(:num_heads, :uint16)
  field(:layers, {:list, :uint16, max: 1024})
  field(:vocab_size, :uint32)
  field(:dropout, :float32)
  field(:tie_embeddings, :boolean)
  field(:dtype, :string, default: "float32")
end

defmodule Calls.Point do
  @moduledoc false
  use Bridge.Schema, name: "calls.Point", version: "1.0"
  field(:x, :int32)
  field(:y, :int32)
  field(:label, {:optional, :string})
end

defmodule Bridge.SchemaCallTest do
  # Typed-schema values through Bridge.call (formats/ssz.md, SPEC §9): a struct
  # arrives as the handler's class and comes back as the struct; lists of them too.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  setup_all do
    start_supervised!({Bridge, bridge_opts(Schemas, pool_size: 1)})
    :ok
  end

  defp call(fun, args), do: Bridge.call({:bbt_schemas, fun}, args, pool: Schemas)

  test "a schema struct arrives as the handler's class and comes back as the struct" do
    config =
      struct(Calls.ModelConfig,
        name: "mini",
        hidden_size: 768,
        num_heads: 12,
        layers: [1, 2, 3],
        vocab_size: 50_257,
        dropout: 0.125,
        tie_embeddings: true
      )

    assert {:ok, %Calls.ModelConfig{} = back} = call(:grow, [config])
    assert back == %{config | hidden_size: 1536}
  end

  test "lists of schema values cross both ways; minor versions read each other" do
    assert {:ok, points} = call(:points, [5])
    assert Enum.all?(points, &match?(%Calls.Point{}, &1))
    assert Enum.map(points, & &1.label) == [nil, "p1", nil, "p3", nil]
    assert call(:norm, [points]) == {:ok, 20}
  end

  test "a value that does not fit its schema, or a schema nobody declared, is a typed error" do
    bad = struct(Calls.Point, x: 1, y: "two")
    assert {:error, e} = call(:norm, [[bad]])
    assert {e.kind, e.reason} == {:bad_call, :bad_value}
    assert e.message =~ "Point.y is \"two\""

    assert {:error, e} = call(:not_declared, [])
    assert {e.kind, e.reason} == {:bad_call, :unknown_schema}
    assert e.message =~ "use Bridge.Schema, name: \"test.Nowhere\""
  end
end
