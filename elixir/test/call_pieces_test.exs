defmodule Bridge.Call.PiecesTest do
  # The caller's side of a long result list in pieces (SPEC §8.6, "Pieces"), fed by
  # hand as a worker's relay would: this test process plays the worker, so it gets
  # the acknowledgements and the reports of a broken worker.
  use ExUnit.Case, async: true

  alias Bridge.Call.Pieces
  alias Bridge.Decoder

  @config %{verify: false, arena_limit: 1_073_741_824}

  defp piece(count, list), do: {:"$bb_piece", count, list}

  defp take(pieces, seq, piece, sid \\ 1),
    do: Pieces.take(pieces, self(), 7, {sid, seq, piece, {}}, @config)

  test "pieces join into the list the answer names, in order, each acknowledged" do
    pieces =
      %Pieces{}
      |> take(1, piece(5, [1, 2]))
      |> take(2, piece(5, [3]))
      |> take(3, piece(5, [4, 5]))

    for seq <- 1..3, do: assert_received({:"$gen_cast", {:stream, 7, {:chunk_ack, 1, ^seq}}})
    assert Pieces.failure(pieces) == nil

    assert Decoder.decode_result([:a, {:"$bb_pieces", 1, 5}], {}, false, pieces) ==
             {:ok, [:a, [1, 2, 3, 4, 5]]}

    Pieces.finish()
  end

  test "an answer whose count or stream disagrees with the pieces is a broken worker's" do
    pieces = take(%Pieces{}, 1, piece(3, [1, 2]))

    for term <- [{:"$bb_pieces", 1, 3}, {:"$bb_pieces", 2, 2}, {:"$bb_pieces", 1, 2.0}] do
      assert {:error, e} = Decoder.decode_result(term, {}, false, pieces)
      assert {e.kind, e.reason} == {:bad_frame, :bad_term}
      assert e.message =~ "came in pieces"
    end

    # and without pieces at all
    assert {:error, %{reason: :bad_term}} =
             Decoder.decode_result({:"$bb_pieces", 1, 0}, {}, false)
  end

  test "a piece that is no list fails the call; the worker is reported and the rest acknowledged" do
    for bad <- [
          piece(3, :not_a_list),
          piece(-1, [1]),
          {:"$bb_piece", 3},
          piece(3, {:"$bb_slice", :schema_list, 0})
        ] do
      pieces = take(%Pieces{}, 1, bad)
      assert %Bridge.Error{kind: :bad_frame} = error = Pieces.failure(pieces)
      assert_received {:"$gen_cast", {:bad_answer, ^error}}
      assert_received {:"$gen_cast", {:stream, 7, {:chunk_ack, 1, 1}}}

      # what comes after is acknowledged unread; the error stays the first
      pieces = take(pieces, 2, piece(3, [1]))
      assert_received {:"$gen_cast", {:stream, 7, {:chunk_ack, 1, 2}}}
      assert Pieces.failure(pieces) == error
      refute_received {:"$gen_cast", {:bad_answer, _}}
    end
  end

  test "a piece of a schema nobody declared here is the call's error; the worker is kept" do
    pieces = take(%Pieces{}, 1, piece(1, {:"$bb_schema_list", "nowhere.Thing", "1.0", <<>>}))
    assert %Bridge.Error{kind: :bad_call, reason: :unknown_schema} = Pieces.failure(pieces)
    refute_received {:"$gen_cast", {:bad_answer, _}}
  end

  test "the first piece of a long list makes room for all of it at once; finish gives it back" do
    value = %Seed.ModelConfig{
      name: "m",
      hidden_size: 1,
      num_heads: 2,
      layers: [3],
      vocab_size: 4,
      dropout: 0.5,
      tie_embeddings: true
    }

    {:ok, data} = Bridge.Schema.Batch.encode(Seed.ModelConfig, List.duplicate(value, 1_024))
    part = {:"$bb_schema_list", "truthgpt.ModelConfig", "2.0", data}
    {:min_heap_size, before} = Process.info(self(), :min_heap_size)

    pieces = take(%Pieces{}, 1, piece(1_000_000, part))
    {:min_heap_size, reserved} = Process.info(self(), :min_heap_size)
    assert reserved >= 1_000_000 * 30
    # the next pieces read into that room; a piece saying another count is broken
    pieces = take(pieces, 2, piece(1_000_000, part))
    assert {:ok, [list]} = Decoder.decode_result([{:"$bb_pieces", 1, 2_048}], {}, false, pieces)
    assert length(list) == 2_048 and hd(list) == value
    assert %{failed: %{kind: :bad_frame}} = take(pieces, 3, piece(5, part))

    Pieces.finish()
    assert Process.info(self(), :min_heap_size) == {:min_heap_size, before}
    # a short list needs no room of its own
    take(%Pieces{}, 1, piece(1_024, part))
    assert Process.info(self(), :min_heap_size) == {:min_heap_size, before}
  end
end
