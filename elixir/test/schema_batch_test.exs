defmodule BatchT.Metric do
  use Bridge.Schema, name: "t.batch.Metric", version: "1.0"
  field(:step, :uint64)
  field(:loss, :float32)
  field(:ok, :boolean)
  field(:latency, {:vector, :float32, 2})
end

defmodule BatchT.Config do
  use Bridge.Schema, name: "t.batch.Config", version: "1.0"
  field(:name, :string)
  field(:hidden, :uint32)
  field(:layers, {:list, :uint16, max: 8})
end

defmodule BatchT.Point do
  use Bridge.Schema, name: "t.batch.Point", version: "2.1"
  field(:x, :int32)
  field(:y, :int32)
  field(:label, {:optional, :string}, since: "2.1")
end

defmodule Bridge.SchemaBatchTest do
  # Batches of typed-schema values (protocol/formats/ssz.md, "Batches"): a list of
  # values of one schema is one SSZ list, the bytes the plain SSZ list codec writes;
  # what does not fit, or bytes that are no list, name the index and the field. The
  # same cases as tests/python/test_ssz_batch.py.
  use ExUnit.Case, async: true
  import Bitwise

  alias Bridge.Schema.{Batch, SSZ, Versions}
  alias BatchT.{Config, Metric, Point}

  doctest Bridge.Schema.Batch
  doctest Bridge.Schema.Tables

  defp metrics(n),
    do:
      for(
        i <- 0..(n - 1)//1,
        do: %Metric{step: i, loss: i / 4, ok: rem(i, 2) == 0, latency: [0.5, rem(i, 7) / 1]}
      )

  defp configs(n),
    do:
      for(
        i <- 0..(n - 1)//1,
        do: %Config{name: "c#{i}", hidden: i, layers: List.duplicate(rem(i, 65_536), rem(i, 9))}
      )

  defp plain_list(module, values),
    do: IO.iodata_to_binary(SSZ.encode({:list, module, max: 1_000_000}, values, "x"))

  test "a batch is the SSZ list of its values, read back to them" do
    for {module, make} <- [{Metric, &metrics/1}, {Config, &configs/1}],
        n <- [0, 1, 2, 7, 5_000] do
      values = make.(n)
      assert {:ok, bin} = Batch.encode(module, values)
      assert bin == plain_list(module, values)
      assert Batch.decode(module, bin) == {:ok, values}
    end
  end

  test "a bad value in a batch of 10k names its index and field" do
    for {module, values, field, bad} <- [
          {Metric, metrics(10_000), :step, -1},
          {Metric, metrics(10_000), :loss, :nan},
          {Metric, metrics(10_000), :ok, 1},
          {Metric, metrics(10_000), :latency, [0.5]},
          {Config, configs(10_000), :hidden, 1 <<< 32},
          {Config, configs(10_000), :name, 42},
          {Config, configs(10_000), :layers, List.duplicate(1, 9)}
        ] do
      values = List.update_at(values, 7_321, &Map.put(&1, field, bad))
      assert {:error, e} = Batch.encode(module, values)
      assert e.reason == :bad_value
      assert e.message =~ "#{module.__schema__(:short)}[7321].#{field}", e.message
    end
  end

  test "bytes that are no batch name the index" do
    {:ok, bin} = Batch.encode(Metric, metrics(10_000))
    size = Metric.__schema__(:fixed_size)
    at = 9_999 * size + 12
    <<head::binary-size(at), _, rest::binary>> = bin
    assert {:error, e} = Batch.decode(Metric, head <> <<2>> <> rest)
    assert e.reason == :bad_ssz and e.message =~ "Metric[9999].ok"
    assert {:error, e} = Batch.decode(Metric, binary_part(bin, 0, byte_size(bin) - 1))
    assert e.message =~ "no whole number"

    {:ok, bin} = Batch.encode(Config, configs(10_000))
    <<head::binary-size(20_000), _::binary-size(4), rest::binary>> = bin
    assert {:error, e} = Batch.decode(Config, head <> <<1_000_000_000::little-32>> <> rest)
    # element 4999 ends at that offset, past the end
    assert e.reason == :bad_ssz and e.message =~ "Config[4999]: offsets"
    assert {:error, %{reason: :bad_ssz}} = Batch.decode(Config, <<3, 0, 0, 0>>)
  end

  test "a batch of an older minor is read as the newest, the later fields filled in" do
    v20 = for i <- 0..2, into: <<>>, do: <<i::little-signed-32, -i::little-signed-32>>

    assert Versions.read_list("t.batch.Point", "2.0", v20) ==
             {:ok, for(i <- 0..2, do: %Point{x: i, y: -i})}

    assert {:error, %{reason: :bad_ssz}} =
             Versions.read_list("t.batch.Point", "2.0", binary_part(v20, 0, 23))
  end

  test "tables: every field a column holds goes there and back; the rest is refused" do
    alias Bridge.Schema.Tables
    metrics = metrics(1_000)
    assert {:ok, table} = Tables.to_table(metrics)
    assert Tables.from_table(table) == {:ok, metrics}
    configs = configs(1_000)
    assert {:ok, table} = Tables.to_table(configs)
    assert Tables.from_table(table) == {:ok, configs}

    # checked as a writer checks: the index and the field
    assert {:error, e} = Tables.to_table(List.update_at(metrics, 999, &%{&1 | step: -1}))
    assert e.message =~ "Metric[999].step is -1"
    assert {:error, %{reason: :bad_value}} = Tables.to_table([])
    assert {:error, %{reason: :bad_value}} = Tables.to_table([hd(metrics), hd(configs)])
  end
end
