defmodule Bridge.TableBridgeTest do
  # Arrow tables on the call path (protocol/formats/arrow.md "On the call path"):
  # %Bridge.Table{} -> pyarrow.Table and pyarrow.Table / RecordBatch /
  # pandas.DataFrame -> %Bridge.Table{}, inline and through slices, across real
  # workers; the Python type never depends on the size (invariant 7).
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  alias Bridge.Table

  @moduletag timeout: 300_000

  setup_all do
    # REG: every table through a slice; INL: every table inline; DEF: 64 KiB
    start_supervised!({Bridge, bridge_opts(BTabReg, pool_size: 1, threshold: 1)},
      id: :reg
    )

    start_supervised!(
      {Bridge, bridge_opts(BTabInl, pool_size: 1, threshold: 1_099_511_627_776)},
      id: :inl
    )

    start_supervised!({Bridge, bridge_opts(BTabDef, pool_size: 1)}, id: :def)
    :ok
  end

  defp call(pool, fun, args), do: Bridge.call({:bbt_tables, fun}, args, pool: pool)

  defp small_table do
    Table.from_rows!([
      %{id: 1, name: "a", ok: true, x: 1.5},
      %{id: 2, name: nil, ok: false, x: -2.0},
      %{id: 3, name: "ç", ok: nil, x: 0.25}
    ])
  end

  @small_fields [
    {"id", "int64", true},
    {"name", "string", true},
    {"ok", "bool", true},
    {"x", "double", true}
  ]

  @small_values %{
    "id" => [1, 2, 3],
    "name" => ["a", nil, "ç"],
    "ok" => [true, false, nil],
    "x" => [1.5, -2.0, 0.25]
  }

  defp large_table(n) do
    Table.from_columns!(
      i: Enum.to_list(0..(n - 1)),
      f: Enum.map(0..(n - 1), &(&1 * 0.5)),
      b: Enum.map(0..(n - 1), &(rem(&1, 3) == 0)),
      s: Enum.map(0..(n - 1), &if(rem(&1, 7) == 0, do: nil, else: "row#{&1}"))
    )
  end

  # What bbt_tables.make_*(n) builds, as Elixir columns.
  defp expected_columns(n, nulls?) do
    %{
      "i" => Enum.to_list(0..(n - 1)),
      "f" => Enum.map(0..(n - 1), &(&1 * 0.5)),
      "b" => Enum.map(0..(n - 1), &(rem(&1, 3) == 0)),
      "s" => Enum.map(0..(n - 1), &if(nulls? and rem(&1, 7) == 0, do: nil, else: "row#{&1}"))
    }
  end

  defp to_summary(%Table{} = t) do
    fields =
      for f <- Table.schema(t).fields,
          do: {f.name, Bridge.Arrow.Type.describe(f.type), f.nullable}

    {"Table", Table.num_rows(t), fields, Table.to_columns(t)}
  end

  describe "Elixir -> Python" do
    test "a small Table arrives as a pyarrow.Table, inline and through a slice" do
      table = small_table()

      for pool <- [BTabReg, BTabInl, BTabDef] do
        assert {:ok, {"Table", 3, @small_fields, @small_values}} = call(pool, :summary, [table]),
               "pool #{inspect(pool)}"
      end
    end

    test "tables below and above the threshold arrive as the same type" do
      start_supervised!({Bridge, bridge_opts(BTabThr, pool_size: 1)}, id: :thr)
      small = Table.from_columns!(v: [1, 2, 3])
      assert byte_size(Bridge.Arrow.encode(small)) < 65_536

      assert {:ok, {"Table", 3, [{"v", "int64", true}], %{"v" => [1, 2, 3]}}} =
               call(BTabThr, :summary, [small])

      assert arena_allocs(BTabThr) == 0

      n = 200_000
      large = large_table(n)
      assert byte_size(Bridge.Arrow.encode(large)) >= 65_536

      assert {:ok, {"Table", ^n, fields, sums}} = call(BTabThr, :stats, [large])
      assert fields == [{"i", "int64"}, {"f", "double"}, {"b", "bool"}, {"s", "string"}]
      assert sums["i"] == div(n * (n - 1), 2)
      assert sums["f"] == div(n * (n - 1), 2) * 0.5
      assert sums["b"] == div(n + 2, 3)

      assert sums["s"] ==
               Enum.sum(for i <- 0..(n - 1), rem(i, 7) != 0, do: byte_size("row#{i}"))

      # it went through a slice of this bridge's arenas
      assert arena_allocs(BTabThr) > 0
    end

    test "tables nested in other arguments, and empty tables" do
      empty = Table.from_columns!([])
      no_rows = Table.from_columns!([{"x", []}], schema: [{"x", {:s, 32}}])

      for pool <- [BTabReg, BTabInl] do
        assert {:ok, {"Table", 0, [], %{}}} = call(pool, :summary, [empty])

        assert {:ok, {"Table", 0, [{"x", "int32", true}], %{"x" => []}}} =
                 call(pool, :summary, [no_rows])

        assert {:ok, [{"Table", 3, @small_fields, @small_values}]} =
                 Bridge.call({:bbt_handlers, :identity}, [[small_table()]], pool: pool)
                 |> then(fn {:ok, [t]} -> {:ok, [to_summary(t)]} end)
      end
    end

    test "a malformed stream is a :bad_call (bad_term) and the worker survives" do
      # A hand-built table whose utf8 offsets point past its data: the Elixir
      # encoder writes it as given; Python's full validation refuses it.
      table = Table.from_columns!(s: ["ab", "cd"])
      [[chunk]] = table.columns
      bad = %{chunk | offsets: <<0::little-32, 2::little-32, 4_000::little-32>>}
      table = %{table | columns: [[bad]]}

      for pool <- [BTabInl, BTabReg] do
        [%{os_pid: os_pid}] = Bridge.workers(pool)

        assert {:error, %Bridge.Error{kind: :bad_call, reason: :bad_term} = e} =
                 call(pool, :summary, [table])

        assert e.message =~ "bad_arrow_stream"
        assert {:ok, {"Table", 3, _, _}} = call(pool, :summary, [small_table()])
        assert [%{os_pid: ^os_pid, phase: :ready}] = Bridge.workers(pool)
      end
    end
  end

  describe "Python -> Elixir" do
    test "small pyarrow.Table, RecordBatch and DataFrame results come back as %Bridge.Table{}" do
      for pool <- [BTabReg, BTabInl, BTabDef],
          {fun, nulls?} <- [make_table: true, make_batch: true, make_dataframe: false] do
        assert {:ok, %Table{} = t} = call(pool, fun, [5]), "#{inspect(pool)} #{fun}"
        assert Table.num_rows(t) == 5
        assert Table.to_columns(t) == expected_columns(5, nulls?), "#{inspect(pool)} #{fun}"
      end
    end

    test "large results come back through a slice, fixed-width columns zero-copy" do
      n = 200_000

      for {fun, nulls?} <- [make_table: true, make_batch: true, make_dataframe: false] do
        assert {:ok, %Table{} = t} = call(BTabDef, fun, [n])
        assert Table.num_rows(t) == n
        assert Table.column_names(t) == ["i", "f", "b", "s"]
        assert Table.to_columns(t) == expected_columns(n, nulls?), "#{fun}"

        for name <- ["i", "f"] do
          [chunk | _] = Table.chunks(t, name)
          assert byte_size(chunk.data) == 8 * chunk.length
          assert_shared_binary(chunk.data)
        end
      end
    end

    test "an identity round trip Elixir -> Python -> Elixir keeps schema and values" do
      tables = [
        small_table(),
        large_table(50_000),
        Table.from_columns!([{"x", []}], schema: [{"x", {:u, 16}}])
      ]

      for pool <- [BTabReg, BTabInl, BTabDef], table <- tables do
        assert {:ok, %Table{} = back} = call(pool, :identity, [table])
        assert Table.schema(back) == Table.schema(table)
        assert Table.to_columns(back) == Table.to_columns(table)
      end

      # nested in a plain term
      assert {:ok, %{"t" => %Table{} = back, "n" => 1}} =
               Bridge.call({:bbt_handlers, :identity}, [%{"t" => small_table(), "n" => 1}],
                 pool: BTabDef
               )

      assert Table.to_columns(back) == @small_values
    end

    test "a result that claims to be an Arrow stream and is not one is :bad_call, worker kept" do
      [%{os_pid: os_pid}] = Bridge.workers(BTabInl)

      assert {:error, %Bridge.Error{kind: :bad_call, reason: :truncated}} =
               call(BTabInl, :forged_arrow, ["not a stream"])

      assert {:ok, %Table{}} = call(BTabInl, :make_table, [2])
      assert [%{os_pid: ^os_pid}] = Bridge.workers(BTabInl)
    end

    test "a decimal column arrives as exact decimals" do
      assert {:ok, %Table{} = t} = call(BTabInl, :decimal_table, [])
      assert Table.column!(t, "d") == [Bridge.Arrow.Decimal.new(150, 2)]
      assert hd(Table.schema(t).fields).type == {:decimal, 128, 5, 2}
    end

    test "a table with a column Bridge.Arrow cannot read fails in the worker, with what to do" do
      [%{os_pid: os_pid}] = Bridge.workers(BTabInl)

      assert {:error, %Bridge.Error{kind: :bad_call} = e} =
               call(BTabInl, :nested_dictionary_table, [])

      assert e.message =~ "column 'd' of type dictionary<values=dictionary"
      assert e.message =~ "decode the inner dictionary first"
      assert {:ok, %Table{}} = call(BTabInl, :make_table, [2])
      assert [%{os_pid: ^os_pid}] = Bridge.workers(BTabInl)
    end
  end
end
