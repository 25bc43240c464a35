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

  test "a list in pieces: each piece the SSZ list of its part, made when taken; a bad value names its index in the whole" do
    for {module, make, field, wrong} <- [
          {Metric, &metrics/1, :latency, [0.5]},
          {Config, &configs/1, :layers, List.duplicate(1, 9)}
        ] do
      values = make.(10)
      pieces = Enum.to_list(Batch.pieces(module, values, 10, 4))
      assert Enum.map(pieces, & &1.count) == [4, 4, 2]

      for {piece, part} <- Enum.zip(pieces, Enum.chunk_every(values, 4)),
          do: assert({piece.module, {:ok, piece.data}} == {module, Batch.encode(module, part)})

      bad = List.update_at(values, 6, &Map.put(&1, field, wrong))
      stream = Batch.pieces(module, bad, 10, 4)
      assert [%Batch.Piece{count: 4}] = Enum.take(stream, 1)
      e = assert_raise Bridge.Error, fn -> Enum.to_list(stream) end
      assert e.reason == :bad_value
      assert e.message =~ "#{module.__schema__(:short)}[6].#{field}"
    end
  end

  test "pieces of large values hold fewer of them: the first a set number, the next as many as fit the bytes" do
    big = String.duplicate("x", 10_000)
    values = for c <- configs(50), do: %{c | name: big}
    pieces = Enum.to_list(Batch.pieces(Config, values, 50, 65_536, first: 4, bytes: 40_000))
    assert hd(pieces).count == 4 and Enum.sum(Enum.map(pieces, & &1.count)) == 50
    assert Enum.all?(tl(pieces), &(&1.count < 4 and byte_size(&1.data) <= 40_000))

    assert Enum.flat_map(pieces, &elem(Batch.decode(Config, &1.data), 1)) == values
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
    # fewer bytes than one offset
    assert {:error, %{reason: :bad_ssz}} = Batch.decode(Config, <<4>>)
    assert {:error, %{reason: :bad_ssz}} = Batch.decode(Config, <<4, 0, 0>>)
  end

  test "a batch big enough to be read with heap room made for it: same values, same errors, the heap setting restored" do
    {:min_heap_size, before} = Process.info(self(), :min_heap_size)
    values = configs(100_000)
    {:ok, bin} = Batch.encode(Config, values)
    assert Batch.decode(Config, bin) == {:ok, values}
    assert Process.info(self(), :min_heap_size) == {:min_heap_size, before}

    # offsets out of order in the middle: element 60000 ends before it starts
    at = 4 * 60_001
    <<head::binary-size(at), _::binary-size(4), rest::binary>> = bin
    assert {:error, e} = Batch.decode(Config, head <> <<400_000::little-32>> <> rest)
    assert e.reason == :bad_ssz and e.message =~ "Config[60000]: offsets", e.message

    # a value that does not read, near the end: its string is no UTF-8
    <<_::binary-size(4 * 99_998), lo::little-32, _::binary>> = bin
    <<head::binary-size(lo + 12), _, rest::binary>> = bin
    assert {:error, e} = Batch.decode(Config, head <> <<0xFF>> <> rest)
    assert e.reason == :bad_ssz and e.message =~ "Config[99998].name", e.message
    assert Process.info(self(), :min_heap_size) == {:min_heap_size, before}
  end

  test "lists of numbers of each type are packed at their bounds as the SSZ list codec says" do
    for {t, bits, lo, hi} <- [
          {:uint8, 8, 0, 255},
          {:uint16, 16, 0, 65_535},
          {:uint32, 32, 0, (1 <<< 32) - 1},
          {:uint64, 64, 0, (1 <<< 64) - 1},
          {:int8, 8, -128, 127},
          {:int16, 16, -32_768, 32_767},
          {:int32, 32, -(1 <<< 31), (1 <<< 31) - 1},
          {:int64, 64, -(1 <<< 63), (1 <<< 63) - 1}
        ] do
      items = [lo, hi, 0, 1, div(hi, 3)]
      signed? = lo < 0

      expected =
        for x <- items,
            into: <<>>,
            do: if(signed?, do: <<x::little-signed-size(bits)>>, else: <<x::little-size(bits)>>)

      assert IO.iodata_to_binary(SSZ.encode({:list, t, max: 8}, items, "x")) == expected
      assert SSZ.decode({:list, t, max: 8}, expected, "x") == items
      # one past a bound: refused, naming the element
      for bad <- [lo - 1, hi + 1] do
        assert catch_throw(SSZ.encode({:list, t, max: 8}, [0, bad], "x"))
               |> elem(1)
               |> Map.get(:message) =~
                 "x[1] is #{bad}"
      end
    end

    floats = [1.5, -0.25, 3.0e38]

    assert IO.iodata_to_binary(SSZ.encode({:list, :float32, max: 4}, floats, "x")) ==
             for(x <- floats, into: <<>>, do: <<x::little-float-32>>)
  end

  test "a schema_list slice whose metadata disagrees with its header is bad_metadata" do
    alias Bridge.Test.Wire
    {:ok, data} = Batch.encode(Metric, metrics(3))
    good = Batch.frame_options("t.batch.Metric", "1.0")
    assert {:ok, metrics(3)} == Wire.decode_slice(:schema_list, data, good)

    for bad <- [
          Keyword.put(good, :metadata, :erlang.term_to_binary({"t.batch.Config", "1.0"})),
          Keyword.put(good, :metadata, :erlang.term_to_binary({"t.batch.Metric", "1.1"})),
          Keyword.put(good, :metadata, :erlang.term_to_binary({"t.batch.Metric", "one"})),
          Keyword.put(good, :metadata, "not a term"),
          Keyword.put(good, :schema_version, 2 <<< 16)
        ] do
      assert {:error, %Bridge.Error{kind: :bad_frame, reason: :bad_metadata}} =
               Wire.decode_slice(:schema_list, data, bad)
    end
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
