defmodule Bridge.ProvenanceTest do
  # Provenance and introspection (protocol/SPEC.md §5.4): every frame says when,
  # who and from what, and Bridge.Frame describes it without its payload. Real
  # workers, real shared memory.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase
  import ExUnit.CaptureIO

  alias Bridge.Frame
  alias Bridge.Frame.Description

  @moduletag timeout: 300_000
  @moduletag :tmp_dir

  setup do
    start_supervised!({Bridge, bridge_opts(Prov, pool_size: 1, threshold: 1024)})
    :ok
  end

  defp call(fun, args, opts \\ []),
    do: Bridge.call({:bbt_provenance, fun}, args, [pool: Prov] ++ opts)

  defp worker_os_pid, do: hd(Bridge.workers(Prov)).os_pid

  test "describe/1 on a region-backed result has every field, the payload unread" do
    before = System.os_time(:nanosecond)
    {:ok, bin} = call(:blob, [100_000], meta: %{"round" => 12, client: "c7"})
    assert {:ok, d} = Frame.describe(bin)

    assert %{format: :raw, codec: :none, version: "2.1", checksum: :none} = d
    assert d.schema == %{id: 0, version: 0, name: nil}
    assert d.lengths.payload == 100_000 and d.lengths.decoded == 100_000
    assert d.lengths.provenance > 0 and d.lengths.frame >= d.payload_offset + 100_000
    assert d.created_at_ns >= before and d.created_at_ns <= System.os_time(:nanosecond)
    assert %DateTime{} = d.created_at
    assert d.frame_id > 0

    assert d.producer == %{
             "side" => "python",
             "node" => Atom.to_string(node()),
             "os_pid" => worker_os_pid(),
             "worker" => "Prov.1",
             "version" => to_string(Application.spec(:beambridge, :vsn))
           }

    assert d.meta == %{"round" => 12, "client" => "c7"}

    assert [%{"handler" => "bbt_provenance.blob", "inputs" => [], "worker" => "Prov.1"}] =
             d.lineage

    assert d.summary == nil and d.provenance_error == nil
    assert d.handle =~ ~r"^/proc/#{worker_os_pid()}/fd/\d+@\d+$"

    # a tensor and a table say their format and descriptor
    {:ok, t} = call(:tensor, [1000])
    assert {:ok, %{format: :tensor, descriptor: desc, meta: %{}}} = Frame.describe(t)
    assert desc == %{"dtype" => "<f4", "shape" => [1000], "order" => "C"}
    {:ok, table} = call(:table, [1000])

    assert {:ok, %{format: :arrow_stream, lineage: [%{"handler" => "bbt_provenance.table"}]}} =
             Frame.describe(table)
  end

  test "a chain of 5 calls shows 5 lineage entries, each linked to the frame before" do
    {:ok, first} = call(:blob, [4096], meta: %{"round" => 3})

    last =
      Enum.reduce(1..4, first, fn _, acc ->
        {:ok, next} = call(:same, [acc])
        next
      end)

    d = Frame.describe!(last)
    assert length(d.lineage) == 5

    assert Enum.map(d.lineage, & &1["handler"]) == [
             "bbt_provenance.blob" | List.duplicate("bbt_provenance.same", 4)
           ]

    # every entry but the newest names the result the chain came through
    assert Enum.all?(Enum.drop(d.lineage, -1), &(&1["frame"] > 0))
    refute Map.has_key?(List.last(d.lineage), "frame")
    assert hd(d.lineage)["frame"] == Frame.describe!(first).frame_id
    assert Enum.map(d.lineage, & &1["call"]) |> Enum.uniq() |> length() == 5
    # the meta of the first call is carried along (no call of the chain gave one)
    assert d.meta == %{"round" => 3}
  end

  test "after 1,000 chained calls the description has stopped growing" do
    {:ok, first} = call(:blob, [2048])

    # the block's size after 40-139 calls and after 900-999
    {last, sizes} =
      Enum.reduce(1..999, {first, %{}}, fn i, {acc, sizes} ->
        {:ok, next} = call(:same, [acc])

        stage =
          cond do
            i in 40..139 -> :early
            i >= 900 -> :late
            true -> nil
          end

        sizes =
          if stage,
            do: Map.update(sizes, stage, [size(next)], &[size(next) | &1]),
            else: sizes

        {next, sizes}
      end)

    assert Enum.uniq(sizes.early ++ sizes.late) == [hd(sizes.late)]
    d = Frame.describe!(last)
    assert length(d.lineage) == 32
    assert %{"count" => 968, "first_at" => first_at} = d.summary
    assert first_at == hd(Frame.describe!(first).lineage)["at"]
  end

  defp size(value), do: Frame.describe!(value).lengths.provenance

  test "meta: reaches the handler, comes back on the result, and a handler may add to it" do
    assert call(:meta, [], meta: %{"round" => 12, client: "c7", nested: %{ids: [1, 2]}}) ==
             {:ok, %{"round" => 12, "client" => "c7", "nested" => %{"ids" => [1, 2]}}}

    assert call(:meta, []) == {:ok, %{}}

    {:ok, bin} = call(:annotate, ["loss", 0.25, 5000], meta: %{"round" => 1})
    assert Frame.describe!(bin).meta == %{"round" => 1, "loss" => 0.25}

    # a meta the call gives replaces the one its argument carries
    {:ok, again} = call(:same, [bin], meta: %{"round" => 2})
    assert Frame.describe!(again).meta == %{"round" => 2}
  end

  test "a meta over 1 KiB is stored once per call and stream, and every frame resolves it" do
    big = %{"config" => String.duplicate("abcdefgh", 1000), "round" => 3}

    # 20 result frames: the first holds the meta, the others name it
    {:ok, list} = call(:blobs, [20, 4096], meta: big)
    [first | rest] = Enum.map(list, &Frame.describe!/1)
    assert first.meta == big and first.meta_ref == nil
    assert first.lengths.provenance > 8000
    assert Enum.all?(rest, &(&1.meta == big and &1.meta_ref["found"] == true))
    assert Enum.all?(rest, &(&1.lengths.provenance < 400))

    # 5 argument frames the BEAM writes: the same, read by the worker
    args = for _ <- 1..5, do: %Bridge.Buffer{data: :binary.copy("q", 5000)}
    {:ok, seen} = call(:describe_args, args, meta: big)
    assert Enum.all?(seen, &(&1["meta"] == big))
    assert [nil | refs] = Enum.map(seen, & &1["meta_ref"])
    assert Enum.all?(refs, &(&1["found"] == true and &1["length"] > 1024))
    assert [holder | others] = Enum.map(seen, & &1["provenance"])
    assert holder > 8000 and Enum.all?(others, &(&1 < 400))

    # a result stream: its first element's frame holds it
    elements =
      Bridge.stream({:bbt_provenance, :chunks}, [3000, 6], pool: Prov, meta: big)
      |> Enum.map(&Frame.describe!/1)

    assert length(elements) == 6 and Enum.all?(elements, &(&1.meta == big))
    assert Enum.count(elements, &(&1.meta_ref == nil)) == 1

    # the description of a frame whose holder this node never read says so
    {:ok, d} = Frame.describe(Bridge.Header.encode_frame!("x", provenance: ref_block()))
    assert d.meta == %{} and d.meta_ref == %{"digest" => 77, "length" => 2000, "found" => false}
  end

  defp ref_block, do: <<5, 12::little-32, 77::little-64, 2000::little-32>>

  test "a meta: that is not plain data is a typed error and the pool keeps working" do
    assert {:error, %Bridge.Error{kind: :bad_call, reason: :badarg, field: :meta} = e} =
             call(:meta, [], meta: [round: 1])

    assert e.message =~ "must be a map"

    assert {:error, %Bridge.Error{reason: :badarg, field: :meta}} =
             call(:meta, [], meta: %{"pid" => self()})

    assert {:error, %Bridge.Error{reason: :badarg, field: :meta}} =
             call(:meta, [], meta: %{"ids" => [1, 2 | 3]})

    # an empty meta: none given, none inherited
    assert call(:meta, [], meta: %{}) == {:ok, %{}}

    big = %{"blob" => :binary.copy("x", 70_000)}

    assert {:error, %Bridge.Error{reason: :too_large, field: :meta}} =
             call(:blob, [2048], meta: big)

    assert call(:meta, [], meta: %{"ok" => true}) == {:ok, %{"ok" => true}}
  end

  test "an argument frame the BEAM writes says so, with the call's meta and its source's chain" do
    # a buffer: the handler gets a view of the argument's frame (bytes are a copy)
    {:ok, first} = call(:blob, [4096])
    {:ok, d} = call(:describe_arg, [%Bridge.Buffer{data: first}], meta: %{"client" => "c9"})
    d = Map.new(d, fn {k, v} -> {to_string(k), v} end)

    assert d["format"] == "raw"
    assert %{"side" => "elixir", "os_pid" => os_pid, "node" => node} = d["producer"]
    assert os_pid == String.to_integer(List.to_string(:os.getpid()))
    assert node == Atom.to_string(node())
    assert d["meta"] == %{"client" => "c9"}
    # the chain of the result it was read from, its newest entry now naming that frame
    assert [%{"handler" => "bbt_provenance.blob", "frame" => frame}] = d["lineage"]
    assert frame == Frame.describe!(first).frame_id

    # a fresh binary has no chain
    {:ok, fresh} = call(:describe_arg, [%Bridge.Buffer{data: :binary.copy("y", 4096)}])
    assert fresh["lineage"] == []
    assert fresh["meta"] == %{}
  end

  test "dump/2 and describe_file/1: the same description; a corrupted payload is never read",
       %{tmp_dir: dir} do
    {:ok, bin} = call(:blob, [50_000], meta: %{"round" => 7})
    path = Path.join(dir, "result.frame")
    assert :ok = Frame.dump(bin, path)
    {:ok, live} = Frame.describe(bin)
    {:ok, from_file} = Frame.describe_file(path)
    assert Map.drop(from_file, [:handle, :lengths]) == Map.drop(live, [:handle, :lengths])
    assert File.read!(path) |> byte_size() == live.payload_offset + 50_000

    # the live slice, by its handle, as an operator would name it
    {:ok, by_handle} = Frame.describe_file(live.handle)
    assert by_handle.frame_id == live.frame_id and by_handle.meta == %{"round" => 7}
    assert {:ok, %{frame_id: id}} = Frame.describe(live.handle)
    assert id == live.frame_id

    # a frame with a payload checksum, its payload then corrupted in the file
    fresh = Path.join(dir, "fresh.frame")
    assert :ok = Frame.dump(:binary.copy("z", 10_000), fresh)
    {:ok, clean} = Frame.describe_file(fresh)
    assert clean.checksum == :not_verified and clean.producer["side"] == "elixir"
    corrupt = File.read!(fresh)
    at = clean.payload_offset + 5000
    <<head::binary-size(at), byte, rest::binary>> = corrupt
    File.write!(fresh, <<head::binary, Bitwise.bxor(byte, 0xFF), rest::binary>>)
    assert {:ok, described} = Frame.describe_file(fresh)
    assert described.checksum == :not_verified
    assert Map.drop(described, [:handle]) == Map.drop(clean, [:handle])
    # the payload is corrupt indeed: reading it with verification says so
    assert {:error, %Bridge.Error{reason: :checksum_mismatch}} =
             Bridge.Header.decode_frame(File.read!(fresh), verify: true)
  end

  test "mix beambridge.inspect prints the description as JSON", %{tmp_dir: dir} do
    {:ok, bin} = call(:blob, [3000], meta: %{"round" => 5})
    path = Path.join(dir, "x.frame")
    :ok = Frame.dump(bin, path)
    out = capture_io(fn -> Mix.Tasks.Beambridge.Inspect.run([path]) end)
    {:ok, d} = Frame.describe_file(path)
    assert out == Description.to_json(d) <> "\n"
    json = Bridge.JSON.decode!(out)
    assert json["meta"] == %{"round" => 5} and json["checksum"] == "none"
    assert json["lineage"] |> hd() |> Map.fetch!("handler") == "bbt_provenance.blob"

    assert_raise Mix.Error, ~r/no such file or directory/, fn ->
      Mix.Tasks.Beambridge.Inspect.run([Path.join(dir, "missing")])
    end

    File.write!(Path.join(dir, "bad"), "BBFX" <> :binary.copy(<<0>>, 200))

    assert_raise Mix.Error, ~r/bad_magic/, fn ->
      Mix.Tasks.Beambridge.Inspect.run([Path.join(dir, "bad")])
    end
  end

  test "values that hold no frame are not_a_frame; a frame's own bytes describe" do
    for v <- [%{a: 1}, [1, 2, 3], "short", 42] do
      assert {:error, %Bridge.Error{reason: :not_a_frame}} = Frame.describe(v)
    end

    # below the threshold a result comes inline: no frame
    {:ok, small} = call(:blob, [100])
    assert {:error, %Bridge.Error{reason: :not_a_frame}} = Frame.describe(small)

    bytes = Bridge.Header.encode_frame!("abc", metadata: "m")
    assert {:ok, %{format: :raw, lengths: %{payload: 3, metadata: 1}}} = Frame.describe(bytes)
  end

  test "a block that does not read is the description's provenance_error; the rest stands" do
    block =
      Bridge.Provenance.encode!(%Bridge.Provenance{meta: :erlang.term_to_binary(%{"a" => 1})})

    good = Bridge.Header.encode_frame!("abc", provenance: block, frame_id: 9)
    {:ok, %{meta: %{"a" => 1}, provenance_error: nil}} = Frame.describe(good)

    # a byte of the block changed: its checksum no longer matches
    <<head::binary-size(130), byte, rest::binary>> = good
    bad = <<head::binary, Bitwise.bxor(byte, 1), rest::binary>>
    assert {:ok, d} = Frame.describe(bad)
    assert %Bridge.Error{reason: :provenance_checksum_mismatch} = d.provenance_error
    assert d.meta == %{} and d.frame_id == 9 and d.lengths.payload == 3
    assert Description.to_json(d) =~ ~s("reason": "provenance_checksum_mismatch")

    # a body that is not plain data (a pid): bad_provenance, never a crash
    pid_meta = %Bridge.Provenance{meta: :erlang.term_to_binary(%{"p" => self()})}
    framed = Bridge.Header.encode_frame!("x", provenance: Bridge.Provenance.encode!(pid_meta))

    assert {:ok, %{provenance_error: %Bridge.Error{reason: :bad_provenance, field: :meta}}} =
             Frame.describe(framed)
  end
end
