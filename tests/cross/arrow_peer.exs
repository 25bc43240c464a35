# The Elixir half of the Arrow cross-language tests (driven by test_arrow_codec.py).
#
#   mix run tests/cross/arrow_peer.exs DIR
#
# For every DIR/in/NAME.arrows (an IPC stream pyarrow wrote), in name order:
#   * decode it with Bridge.Arrow.decode/1 and re-encode the table with
#     Bridge.Arrow.encode/1 into DIR/out/NAME.arrows (the buffers as decoded);
#   * turn the table into terms (to_columns, temporal: :integer) and back
#     (from_columns with the decoded schema) and encode that into
#     DIR/out/NAME.terms.arrows (the values as Elixir sees them);
#   * write the table as an IPC file too, into DIR/out/NAME.file.arrow, or
#     "REASON\nMESSAGE" into DIR/out/NAME.file.error when it has none;
#   * or, when decoding fails, write "REASON\nMESSAGE" into DIR/out/NAME.error.
# Every DIR/in/NAME.arrow (an IPC file pyarrow wrote) is decoded the same way and
# written back as a file, DIR/out/NAME.arrow.
# Then write the Elixir-originated tables of `cases/0` into DIR/elixir/CASE.arrows.
# Prints "DONE <count>" at the end; any crash is a non-zero exit.
defmodule ArrowPeer do
  alias Bridge.{Arrow, Table}
  alias Bridge.Arrow.{Field, Schema}

  def main([dir]) do
    out = Path.join(dir, "out")
    File.mkdir_p!(out)
    inputs = dir |> Path.join("in/*.arrows") |> Path.wildcard() |> Enum.sort()
    files = dir |> Path.join("in/*.arrow") |> Path.wildcard() |> Enum.sort()

    for path <- inputs do
      name = Path.basename(path, ".arrows")

      case Arrow.decode(File.read!(path)) do
        {:ok, table} ->
          File.write!(Path.join(out, name <> ".arrows"), Arrow.encode(table))
          File.write!(Path.join(out, name <> ".terms.arrows"), Arrow.encode(via_terms(table)))
          write_file(Path.join(out, name <> ".file"), table)

        {:error, e} ->
          File.write!(Path.join(out, name <> ".error"), "#{e.reason}\n#{e.message}")
      end
    end

    for path <- files do
      table = Arrow.decode!(File.read!(path))
      File.write!(Path.join(out, Path.basename(path)), Arrow.encode(table, format: :file))
    end

    elixir = Path.join(dir, "elixir")
    File.mkdir_p!(elixir)

    for {name, table} <- cases() do
      File.write!(Path.join(elixir, "#{name}.arrows"), Arrow.encode(table))
    end

    IO.puts("DONE #{length(inputs) + length(files)}")
  end

  defp write_file(base, table) do
    File.write!(base <> ".arrow", Arrow.encode(table, format: :file))
  rescue
    e in Bridge.Error -> File.write!(base <> ".error", "#{e.reason}\n#{e.message}")
  end

  defp via_terms(table) do
    columns = Table.to_columns(table, temporal: :integer)
    ordered = for name <- Table.column_names(table), do: {name, Map.fetch!(columns, name)}
    %Schema{} = schema = Table.schema(table)

    # A table without columns still has its rows.
    %{Table.from_columns!(ordered, schema: schema) | num_rows: table.num_rows}
  end

  # Each case's expected pyarrow table is in test_arrow_codec.py (ELIXIR_CASES).
  def cases do
    [
      rows:
        Table.from_rows!([
          %{id: 1, name: "ada", score: 1.5, ok: true},
          %{id: 2, name: nil, score: -0.0, ok: false},
          %{id: -(2 ** 63), name: "ünï 🎉", score: nil, ok: nil}
        ]),
      columns:
        Table.from_columns!(
          bytes: [<<0, 255>>, "text", nil],
          day: [~D[1970-01-01], ~D[2024-02-29], nil],
          naive: [~N[2024-01-01 12:00:00.000001], nil, ~N[1900-01-01 00:00:00]],
          utc: [~U[2024-01-01 00:00:00Z], nil, ~U[1969-12-31 23:59:59.999999Z]],
          lists: [[1, 2, 3], [], nil],
          nested: [[["a"], []], nil, [nil, ["b", nil]]],
          nothing: [nil, nil, nil]
        ),
      declared:
        Table.from_columns!(
          %{
            "i8" => [-128, 127, nil],
            "u64" => [0, 2 ** 64 - 1, nil],
            "f16" => [0.5, :infinity, nil],
            "f32" => [:nan, -1.25, nil],
            "d64" => [~D[2000-01-01], nil, ~D[1960-06-30]],
            "ts_s" => [~N[2000-01-01 00:00:01], nil, 0],
            "ts_ns" => [~U[2000-01-01 00:00:00.000001Z], nil, 1],
            "big" => ["x", "yy", nil],
            "dict" => ["red", "green", "red"]
          },
          schema: [
            {"i8", {:s, 8}},
            {"u64", {:u, 64}},
            {"f16", {:f, 16}},
            {"f32", {:f, 32}},
            {"d64", :date64},
            {"ts_s", {:timestamp, :s, nil}},
            {"ts_ns", {:timestamp, :ns, "Europe/Paris"}},
            {"big", :large_utf8},
            Field.new("dict", {:dictionary, {:s, 32}, :utf8, false}, nullable: false)
          ]
        ),
      nested:
        Table.from_rows!(
          [
            %{
              id: 1,
              user: %{name: "ada", tags: ["x"]},
              items: [%{sku: "a-1", qty: 2}],
              price: Bridge.Arrow.Decimal.new(1999, 2),
              emb: [0.5, -1.0],
              attrs: [{"a", 1}, {"a", 2}]
            },
            %{id: 2, user: nil, items: [], price: nil, emb: nil, attrs: []}
          ],
          schema: [
            {"price", {:decimal, 128, 10, 2}},
            {"emb", {:fixed_size_list, Field.new("item", {:f, 32}), 2}},
            {"attrs", Bridge.Arrow.Type.map(:utf8, {:s, 64})}
          ]
        ),
      empty: Table.from_columns!([a: [], b: []], schema: [a: {:s, 32}, b: :utf8]),
      no_columns: Table.from_rows!([])
    ]
  end
end

ArrowPeer.main(System.argv())
