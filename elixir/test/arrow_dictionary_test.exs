defmodule Bridge.ArrowDictionaryTest do
  # Dictionaries across batches: deltas are kept as chunks (Array.deltas) and
  # written back as delta batches, replacements are refused in IPC files, and a
  # dictionary grown by deltas is bounded by :max_rows. (pyarrow's own deltas,
  # nested too: tests/cross/test_arrow_types.py.)
  use ExUnit.Case, async: true

  alias Bridge.{Arrow, Error, Table}
  alias Bridge.Arrow.{Array, Field, Metadata}

  @type_ {:dictionary, {:s, 32}, :utf8, false}

  defp column(values), do: hd(hd(Table.from_columns!([c: values], schema: [c: @type_]).columns))

  # One column over dictionary `dict` plus `deltas`, indices `indices`.
  defp table(dict, deltas, indices) do
    d = %{column(dict).dictionary | deltas: Enum.map(deltas, &column(&1).dictionary)}

    a = %Array{
      type: @type_,
      length: length(indices),
      data: for(i <- indices, into: <<>>, do: <<i::little-32>>),
      dictionary: d
    }

    %Table{
      schema: Bridge.Arrow.Schema.new([Field.new("c", @type_)]),
      columns: [[a]],
      num_rows: length(indices)
    }
  end

  # The message kinds of a stream, with each dictionary batch's delta flag.
  defp messages(stream) do
    for {msg, _bin, _meta_len, _body_len} <- framed(stream, 0) do
      case msg do
        {:dictionary_batch, _id, _batch, delta} -> {:dictionary_batch, delta}
        other -> elem(other, 0)
      end
    end
  end

  test "deltas are read as chunks, indices count through them, and are written back as deltas" do
    t = table(["a", "b"], [["c"], ["d", "e"]], [0, 2, 4, 3])
    stream = Arrow.encode(t)

    assert messages(stream) == [
             :schema,
             {:dictionary_batch, false},
             {:dictionary_batch, true},
             {:dictionary_batch, true},
             :record_batch
           ]

    assert {:ok, back} = Arrow.decode(stream)
    assert Table.column!(back, "c") == ["a", "c", "e", "d"]
    [%Array{dictionary: d}] = Table.chunks(back, "c")
    assert d.length == 2 and Enum.map(d.deltas, & &1.length) == [1, 2]

    # a second batch that only adds a delta writes only that delta
    [a] = hd(back.columns)
    grown = %{a | dictionary: %{d | deltas: d.deltas ++ [column(["f"]).dictionary]}}

    two = %{
      back
      | columns: [
          [a, %{grown | data: <<5::little-32, 0::little-32, 0::little-32, 0::little-32>>}]
        ],
        num_rows: 8
    }

    stream = Arrow.encode(two)
    assert Enum.count(messages(stream), &(&1 == {:dictionary_batch, true})) == 3
    assert Table.column!(Arrow.decode!(stream), "c") == ["a", "c", "e", "d", "f", "a", "a", "a"]

    # and the file format, which has deltas but no replacements, takes them too
    file = Arrow.encode(two, format: :file)
    assert Table.column!(Arrow.decode!(file), "c") == Table.column!(two, "c")
  end

  test "an index past the dictionary and its deltas is refused" do
    stream = Arrow.encode(table(["a"], [["b"]], [0, 1]))
    assert {:ok, _} = Arrow.decode(stream)
    bad = Arrow.encode(table(["a"], [["b"]], [0, 2]))
    assert {:error, %Error{kind: :arrow, reason: :bad_dictionary_index}} = Arrow.decode(bad)
  end

  test "a dictionary that deltas grow past :max_rows is refused before it is used" do
    stream = Arrow.encode(table(["a", "b"], [["c", "d"], ["e"]], [0]))
    assert {:ok, _} = Arrow.decode(stream, max_rows: 5)

    assert {:error, %Error{reason: :too_many_rows, field: :dictionary_length, value: 5}} =
             Arrow.decode(stream, max_rows: 4)
  end

  test "a replaced dictionary goes in a stream; an IPC file refuses it, written or read" do
    one = table(["a", "b"], [], [0, 1])
    two = table(["x", "y"], [], [0, 1])
    t = %{one | columns: [hd(one.columns) ++ hd(two.columns)], num_rows: 4}
    stream = Arrow.encode(t)
    assert Table.column!(Arrow.decode!(stream), "c") == ["a", "b", "x", "y"]

    e = assert_raise Error, fn -> Arrow.encode(t, format: :file) end
    assert e.reason == :dictionary_replacement

    # a file that has one anyway (the stream's messages behind a footer)
    assert {:error, %Error{kind: :arrow, reason: :bad_dictionary} = e} =
             Arrow.decode(file_of(stream, t.schema))

    assert e.message =~ "one dictionary per field"
  end

  # The messages of `stream` as an IPC file, every dictionary batch in the footer.
  defp file_of(stream, schema) do
    {io, _pos, dicts, batches} =
      stream
      |> framed(0)
      |> Enum.reduce({[], 8, [], []}, fn {msg, bin, meta_len, body_len}, {io, pos, d, b} ->
        block = {pos, meta_len, body_len}
        next = {[io, bin], pos + byte_size(bin)}

        case elem(msg, 0) do
          :dictionary_batch -> {elem(next, 0), elem(next, 1), [block | d], b}
          :record_batch -> {elem(next, 0), elem(next, 1), d, [block | b]}
          :schema -> {elem(next, 0), elem(next, 1), d, b}
        end
      end)

    footer = Metadata.footer(schema, Enum.reverse(dicts), Enum.reverse(batches))

    IO.iodata_to_binary([
      "ARROW1",
      <<0, 0>>,
      io,
      <<0xFFFFFFFF::32, 0::32>>,
      footer,
      <<byte_size(footer)::little-32>>,
      "ARROW1"
    ])
  end

  defp framed(stream, pos) do
    case stream do
      <<_::binary-size(pos), 0xFFFFFFFF::32, 0::32, _::binary>> ->
        []

      <<_::binary-size(pos), 0xFFFFFFFF::32, len::little-32, meta::binary-size(len), _::binary>> ->
        {msg, body_len} = Metadata.read_message(meta, [])
        total = 8 + len + body_len

        [
          {msg, binary_part(stream, pos, total), 8 + len, body_len}
          | framed(stream, pos + total)
        ]
    end
  end
end
