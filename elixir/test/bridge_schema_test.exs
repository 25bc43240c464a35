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

defmodule Calls.PointV10 do
  @moduledoc false
  use Bridge.Schema, name: "calls.Point", version: "1.0"
  field(:x, :int32)
  field(:y, :int32)
end

defmodule Calls.Point do
  @moduledoc false
  use Bridge.Schema, name: "calls.Point", version: "1.1"
  field(:x, :int32)
  field(:y, :int32)
  field(:label, {:optional, :string}, since: "1.1")
end

# calls.Model in three majors, each migrated from the one before, as in
# elixir/test/handlers/bbt_schemas.py; and a 0.9 that Python does not know.
defmodule Calls.ModelV0 do
  @moduledoc false
  use Bridge.Schema, name: "calls.Model", version: "0.9"
  field(:title, :string)
end

defmodule Calls.ModelV1 do
  @moduledoc false
  use Bridge.Schema, name: "calls.Model", version: "1.0"
  field(:title, :string)
  field(:hidden, :uint16)
end

defmodule Calls.ModelV2 do
  @moduledoc false
  use Bridge.Schema, name: "calls.Model", version: "2.0"
  field(:name, :string)
  field(:hidden_size, :uint32)
  migrate(from: "1.0", with: &__MODULE__.from_v1/1)
  def from_v1(old), do: %{name: old.title, hidden_size: 2 * old.hidden}
end

defmodule Calls.ModelV3 do
  @moduledoc false
  use Bridge.Schema, name: "calls.Model", version: "3.0"
  field(:name, :string)
  field(:hidden_size, :uint32)
  field(:layers, {:list, :uint16, max: 16})
  migrate(from: "2.0", with: &__MODULE__.from_v2/1)
  def from_v2(old), do: Map.put(old, :layers, [rem(old.hidden_size, 65_536)])
end

defmodule Bridge.SchemaCallTest do
  # Typed-schema values through Bridge.call (formats/ssz.md, SPEC §9): a struct
  # arrives as the handler's class and comes back as the struct; lists of them too.
  use ExUnit.Case, async: false

  import Bitwise, only: [<<<: 2]
  import Bridge.Test.BridgeCase

  setup_all do
    start_supervised!({Bridge, bridge_opts(Schemas, pool_size: 1)})
    :ok
  end

  defp call(fun, args), do: Bridge.call({:bbt_schemas, fun}, args, pool: Schemas)
  defp stream(fun, args), do: Bridge.stream({:bbt_schemas, fun}, args, pool: Schemas)

  # A process making a call with 2 minutes to go, whose messages this process sees
  # (it sends :not_killed if the call ends).
  defp traced_caller(fun, args) do
    me = self()

    caller =
      spawn(fn ->
        receive do
          :go -> :ok
        end

        Bridge.call({:bbt_schemas, fun}, args, pool: Schemas, timeout: 120_000)
        send(me, :not_killed)
      end)

    :erlang.trace(caller, true, [:receive])
    send(caller, :go)
    caller
  end

  defp call_within(fun, args, timeout),
    do: Bridge.call({:bbt_schemas, fun}, args, pool: Schemas, timeout: timeout)

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

  test "lists of schema values cross both ways" do
    assert {:ok, points} = call(:points, [5])
    assert Enum.all?(points, &match?(%Calls.Point{}, &1))
    assert Enum.map(points, & &1.label) == [nil, "p1", nil, "p3", nil]
    assert call(:norm, [points]) == {:ok, 20}
  end

  test "an older minor is read on either side, the later fields filled in" do
    # Python writes 1.0, the BEAM reads 1.1; and the reverse
    assert call(:old_points, [3]) ==
             {:ok, for(i <- 0..2, do: %Calls.Point{x: i, y: i, label: nil})}

    old = for i <- 0..2, do: %Calls.PointV10{x: i, y: -i}
    assert call(:labels, [old]) == {:ok, [nil, nil, nil]}
  end

  test "a writer on 1.0 and a reader on 3.0 work, both ways: the steps are migrated" do
    assert {:ok, models} = call(:old_models, [3])

    assert models == [
             %Calls.ModelV3{name: "m0", hidden_size: 0, layers: [0]},
             %Calls.ModelV3{name: "m1", hidden_size: 200, layers: [200]},
             %Calls.ModelV3{name: "m2", hidden_size: 400, layers: [400]}
           ]

    old = %Calls.ModelV1{title: "big", hidden: 40_000}
    assert call(:model_fields, [old]) == {:ok, ["big", 80_000, [rem(80_000, 65_536)]]}
    # the same value sent at 3.0 arrives as itself
    assert call(:model_fields, [hd(models)]) == {:ok, ["m0", 0, [0]]}
  end

  test "a version outside what the reader can migrate names the steps to declare" do
    assert {:error, e} = call(:model_fields, [%Calls.ModelV0{title: "ancient"}])
    assert {e.kind, e.reason} == {:bad_call, :no_migration}

    assert e.message =~
             "the version 0.9 itself (@beambridge.schema('calls.Model', version='0.9')); " <>
               "a migration from 0.9 to 1.0"

    # and the worker goes on
    assert call(:norm, [[%Calls.Point{x: 1, y: 1}]]) == {:ok, 2}
  end

  test "a value that does not fit its schema, or a schema nobody declared, is a typed error" do
    bad = struct(Calls.Point, x: 1, y: "two")
    assert {:error, e} = call(:norm, [[bad]])
    assert {e.kind, e.reason} == {:bad_call, :bad_value}
    assert e.message =~ "Point[0].y is \"two\""

    # an improper list of schema values is refused as any improper list is
    assert {:error, e} = call(:norm, [[struct(Calls.Point, x: 1, y: 2) | :tail]])
    assert {e.kind, e.reason} == {:bad_call, :bad_term}
    assert e.message =~ "expected a proper list"
    assert call(:norm, [[struct(Calls.Point, x: 3, y: 4)]]) |> elem(0) == :ok

    assert {:error, e} = call(:not_declared, [])
    assert {e.kind, e.reason} == {:bad_call, :unknown_schema}
    assert e.message =~ "use Bridge.Schema, name: \"test.Nowhere\""
  end

  defp configs(n) do
    for i <- 0..(n - 1)//1 do
      struct(Calls.ModelConfig,
        name: "m#{i}",
        hidden_size: i,
        num_heads: rem(i, 65_536),
        layers: List.duplicate(rem(i, 65_536), rem(i, 5)),
        vocab_size: 50_257,
        dropout: 0.5,
        tie_embeddings: rem(i, 2) == 0
      )
    end
  end

  test "a list of schema values crosses as one SSZ list, in a slice when large, both ways" do
    Bridge.reset_format_stats()

    for n <- [1, 3, 50_000] do
      list = configs(n)
      assert call(:sum_configs, [list]) == {:ok, [n, div(n * (n - 1), 2)]}
      assert call(:echo, [list]) == {:ok, list}
      assert call(:make_configs, [n]) == {:ok, list}
    end

    count = fn dir, form ->
      for(%{direction: ^dir, form: ^form, count: c} <- Bridge.format_stats(), do: c) |> Enum.sum()
    end

    # the 50k lists each way in slices, the short ones inline
    assert count.(:to_python, :schema_slice) == 2 and count.(:from_python, :schema_slice) == 2
    assert count.(:to_python, :schema) == 4 and count.(:from_python, :schema) == 4
  end

  test "a bad value in a batch of 10k names its index and field, and the call goes on" do
    list = List.update_at(configs(10_000), 7_321, &%{&1 | num_heads: 70_000})
    assert {:error, e} = call(:sum_configs, [list])
    assert {e.kind, e.reason} == {:bad_call, :bad_value}
    assert e.message =~ "ModelConfig[7321].num_heads is 70000"
    assert call(:sum_configs, [configs(2)]) == {:ok, [2, 1]}
  end

  test "a list of 131,072 values or more goes in pieces and arrives whole, in order, typed" do
    Bridge.reset_format_stats()
    n = 200_000
    list = configs(n)
    assert call(:sum_configs, [list]) == {:ok, [n, div(n * (n - 1), 2)]}
    assert call(:echo, [list]) == {:ok, list}

    pieces =
      for %{direction: :to_python, form: form, count: c} <- Bridge.format_stats(),
          form in [:schema, :schema_slice],
          do: c

    # pieces of 1,024, 65,536, 65,536, 65,536 and 2,368 values: five for each call
    assert Enum.sum(pieces) == 10
  end

  test "pieces of large values are cut to a few MiB, so a list past the arena limit crosses" do
    # 131,072 values of 1.1 KB: 65,536 of them would be 72 MB, past both the 16 MiB
    # arenas and the 64 MiB a control frame carries
    start_supervised!(
      {Bridge, bridge_opts(SmallArenas, pool_size: 1, arena_limit: 16 * 1024 * 1024)}
    )

    name = String.duplicate("n", 1_100)
    list = for c <- configs(131_072), do: %{c | name: name}

    assert Bridge.call({:bbt_schemas, :sum_configs}, [list], pool: SmallArenas) ==
             {:ok, [131_072, div(131_072 * 131_071, 2)]}

    # one value no slice and no control frame can take: the call fails with why
    huge = List.update_at(list, 70_000, &%{&1 | name: String.duplicate("h", 70 <<< 20)})
    assert {:error, e} = Bridge.call({:bbt_schemas, :sum_configs}, [huge], pool: SmallArenas)
    assert {e.kind, e.reason} == {:bad_call, :too_large}
    assert e.message =~ "raise :arena_limit"

    assert {:ok, [2, 1]} =
             Bridge.call({:bbt_schemas, :sum_configs}, [configs(2)], pool: SmallArenas)
  end

  test "a bad value in a later piece names its index in the whole list; the handler never runs" do
    {:ok, before} = call(:sums_made, [])
    list = List.update_at(configs(200_000), 150_001, &%{&1 | num_heads: 70_000})
    assert {:error, e} = call(:sum_configs, [list])
    assert {e.kind, e.reason} == {:bad_call, :bad_value}
    assert e.message =~ "ModelConfig[150001].num_heads is 70000"
    assert call(:sums_made, []) == {:ok, before}
    assert call(:sum_configs, [configs(2)]) == {:ok, [2, 1]}

    # the same through Bridge.stream/3: the stream raises that error
    e = assert_raise Bridge.Error, fn -> Enum.to_list(stream(:echo, [list])) end
    assert {e.kind, e.reason} == {:bad_call, :bad_value}
    assert e.message =~ "ModelConfig[150001].num_heads is 70000"
    assert Enum.to_list(stream(:echo, [configs(3)])) == configs(3)
  end

  test "a list of 131,072 values or more from Python comes in pieces, each read as it comes" do
    Bridge.reset_format_stats()
    n = 200_000
    assert call(:make_configs, [n]) == {:ok, configs(n)}

    pieces =
      for %{direction: :from_python, form: form, count: c} <- Bridge.format_stats(),
          form in [:schema, :schema_slice],
          do: c

    # 1,024 values, then as many as fill about 4 MiB (65,536 at most): five pieces
    assert Enum.sum(pieces) == 5

    # beside a slice of the answer's own
    assert {:ok, [list, bin]} = call(:beside_bytes, [n, 3_000_000])
    assert list == configs(n) and bin == :binary.copy(<<0>>, 3_000_000)
  end

  test "a bad value in a later piece from Python names its index in the whole list" do
    assert {:error, e} = call(:bad_configs, [200_000, 150_001])
    assert {e.kind, e.reason} == {:bad_call, :bad_value}
    assert e.message =~ "ModelConfig[150001].num_heads is 70000"

    # the answer's own slice is taken back, and the worker serves on
    assert {:error, e} = call(:beside_bytes, [200_000, 3_000_000, 199_999])
    assert {e.kind, e.reason} == {:bad_call, :bad_value}
    assert e.message =~ "ModelConfig[199999].num_heads is 70000"
    assert call(:make_configs, [3]) == {:ok, configs(3)}
  end

  test "a caller that dies while pieces come does not hold the worker up" do
    {:ok, _} = call(:made_configs, [400_000])
    caller = traced_caller(:made_configs, [400_000])

    # killed as the first piece reaches it: the worker would wait for its
    # acknowledgements for the call's 2 minutes; the worker's relay gives them
    assert_receive {:trace, ^caller, :receive, {:bridge_piece, _, _, _, {_sid, 1, _, _}}},
                   30_000

    Process.exit(caller, :kill)
    assert call_within(:make_configs, [3], 20_000) == {:ok, configs(3)}
    refute_received :not_killed
  end

  test "a caller of a call with an argument stream that dies before its pieces come, too" do
    {:ok, _} = call(:made_configs, [400_000])
    caller = traced_caller(:configs_after, [Bridge.Stream.from(1..10), 400_000])

    # killed once the handler has taken the whole stream, before the pieces: the
    # worker's relay is made after the caller's exit was seen (and its abort of
    # the ended stream reaches the worker as the pieces go); the pieces are
    # acknowledged all the same
    assert_receive {:trace, ^caller, :receive, {:bridge_stream, _, _, {:ack, _, 10}}}, 30_000
    Process.exit(caller, :kill)
    assert call_within(:make_configs, [3], 20_000) == {:ok, configs(3)}
    refute_received :not_killed
  end

  test "a call that ends while pieces come leaves nothing behind for the caller" do
    {:ok, _} = call_within(:made_configs, [1_000_000], 60_000)

    # ended by its timeout while pieces come (or, on a fast day, done first)
    case Bridge.call({:bbt_schemas, :made_configs}, [1_000_000], pool: Schemas, timeout: 100) do
      {:ok, list} -> assert length(list) == 1_000_000
      {:error, e} -> assert e.kind == :timeout
    end

    Process.sleep(300)
    assert Process.info(self(), :messages) == {:messages, []}
    assert call(:make_configs, [3]) == {:ok, configs(3)}
  end

  test "a table of schema values carries its name and version; the rules apply both ways" do
    alias Bridge.Schema.Tables

    # Elixir writes 1.0 points and 1.0 models; Python reads them at 1.1 and 3.0
    {:ok, points} = Tables.to_table(for i <- 0..2, do: %Calls.PointV10{x: i, y: i})
    assert call(:from_table, [points]) == {:ok, for(i <- 0..2, do: %Calls.Point{x: i, y: i})}
    {:ok, models} = Tables.to_table([%Calls.ModelV1{title: "a", hidden: 7}])

    assert call(:from_table, [models]) ==
             {:ok, [%Calls.ModelV3{name: "a", hidden_size: 14, layers: [14]}]}

    # Python writes them; the BEAM reads the same
    assert {:ok, %Bridge.Table{} = table} = call(:table_of, ["points", 3])
    assert {"beambridge.schema_version", "1.0"} in table.schema.metadata
    assert Tables.from_table(table) == {:ok, for(i <- 0..2, do: %Calls.Point{x: i, y: -i})}
    assert {:ok, table} = call(:table_of, ["models", 2])

    assert Tables.from_table(table) ==
             {:ok,
              [
                %Calls.ModelV3{name: "m0", hidden_size: 0, layers: [0]},
                %Calls.ModelV3{name: "m1", hidden_size: 2, layers: [2]}
              ]}

    # a table without a schema in its metadata, or lacking a column, says so
    {:ok, plain} = Bridge.Table.from_columns(x: [1])
    assert {:error, %{reason: :bad_metadata}} = Tables.from_table(plain)
    assert {:error, e} = call(:from_table, [plain])
    assert e.message =~ "names no typed schema"
    md = [{"beambridge.schema", "calls.Point"}, {"beambridge.schema_version", "1.1"}]

    {:ok, short} =
      Bridge.Table.from_columns([x: [1]], schema: Bridge.Arrow.Schema.new([], metadata: md))

    assert {:error, e} = Tables.from_table(short)
    assert e.message == ~s(bad_value: the table of "calls.Point" 1.1 lacks the columns y, label)

    # fields no column holds (a nested schema, a union) are refused, saying what to do
    assert {:error, e} = Tables.to_table([struct(Seed.ModelInfo)])
    assert e.reason == :bad_value and e.message =~ "config is Seed.ModelConfig"
    assert e.message =~ "send the list itself"
  end
end
