defmodule Bridge.StreamTest do
  # Streams (protocol/SPEC.md §8.6) between real Python workers and this BEAM:
  # generators, async generators and Arrow tables as lazy Elixir streams,
  # enumerables as Python iterators, transforms, early stops, kill -9 and
  # resume, corrupted chunks, per-element timeouts, and callers that die.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase
  import ExUnit.CaptureLog, only: [capture_log: 1, with_log: 1]

  alias Bridge.Stream.Checkpoint

  @moduletag timeout: 180_000

  setup_all do
    start_supervised!({Bridge, bridge_opts(Streams, pool_size: 1, timeout: 20_000)})
    :ok
  end

  defp stream(fun, args, opts \\ []),
    do: Bridge.stream({:bbt_streams, fun}, args, [pool: Streams] ++ opts)

  defp call(fun, args), do: Bridge.call({:bbt_streams, fun}, args, pool: Streams)

  defp closed, do: elem(call(:was_closed, []), 1)

  test "a generator becomes a lazy stream, its elements in order" do
    assert stream(:count, [10]) |> Enum.to_list() == Enum.to_list(0..9)
    assert stream(:count, [0]) |> Enum.to_list() == []
    assert stream(:count, [3], window: 1) |> Enum.map(&(&1 * 10)) == [0, 10, 20]
  end

  test "an early stop runs the generator's finally, and the worker serves the next call" do
    before = length(closed())
    assert stream(:count, [1_000_000]) |> Enum.take(3) == [0, 1, 2]
    assert Enum.drop(closed(), before) == ["count from 0"]
    assert [%{phase: :ready}] = Bridge.workers(Streams)
    assert stream(:count, [2]) |> Enum.to_list() == [0, 1]
  end

  test "async generators stream and are closed when stopped" do
    assert stream(:ticks, [5]) |> Enum.to_list() == [0, 1, 2, 3, 4]
    before = length(closed())
    assert stream(:ticks, [1_000]) |> Enum.take(2) == [0, 1]
    assert Enum.drop(closed(), before) == ["ticks"]
  end

  test "an exception ends the stream after its elements, as a Bridge.Error" do
    {taken, error} =
      try do
        {stream(:fails_after, [3]) |> Enum.map(& &1), nil}
      rescue
        e in Bridge.Error -> {nil, e}
      end

    assert taken == nil
    assert error.kind == :python_exception and error.python_type == "ValueError"
    assert error.checkpoint.taken == 3
  end

  test "large elements come through shared memory, and the worker's memory stays bounded" do
    # 64 elements of 4 MiB: 256 MiB in all, through a window of 4
    total =
      stream(:blobs, [64, 4 * 1024 * 1024])
      |> Stream.map(&byte_size/1)
      |> Enum.sum()

    assert total == 64 * 4 * 1024 * 1024
    :erlang.garbage_collect()
    {:ok, memory} = call(:worker_memory, [])
    assert memory["lent"] == 0
    # never more than the window and what the consumer had not collected yet
    assert memory["peak"] <= 128 * 1024 * 1024
  end

  test "a 1M-row Arrow table streamed as record batches arrives as Bridge.Table batches" do
    batches = stream(:record_batches, [1_000_000, 100_000], window: 2) |> Enum.to_list()
    assert length(batches) == 10
    assert Enum.all?(batches, &match?(%Bridge.Table{}, &1))
    assert Enum.map(batches, &Bridge.Table.num_rows/1) == List.duplicate(100_000, 10)
    ids = Enum.flat_map(batches, &Bridge.Table.column!(&1, "id"))
    assert ids == Enum.to_list(0..999_999)
    assert Bridge.Table.column!(List.last(batches), "x") |> List.last() == 999_999 * 0.5
  end

  test "an enumerable becomes a Python iterator argument, sent as the handler reads" do
    assert call(:total, [Bridge.Stream.from(1..10_000, window: 8)]) == {:ok, 50_005_000}

    path = Path.join(System.tmp_dir!(), "bb_stream_#{System.unique_integer([:positive])}")
    data = :crypto.strong_rand_bytes(3 * 1024 * 1024 + 17)
    File.write!(path, data)

    try do
      expected = :crypto.hash(:sha256, data) |> Base.encode16(case: :lower)
      chunks = Bridge.Stream.from(File.stream!(path, [], 256 * 1024))
      assert call(:sha256, [chunks]) == {:ok, expected}
    after
      File.rm(path)
    end
  end

  test "a transform reads one stream and writes another, both at once" do
    out = stream(:double, [Bridge.Stream.from(1..2_000, window: 3)], window: 2)
    assert Enum.to_list(out) == Enum.map(1..2_000, &(&1 * 2))
    # stopped early while the handler waits for input: it unwinds
    assert stream(:double, [Bridge.Stream.from(Stream.iterate(1, &(&1 + 1)))]) |> Enum.take(5) ==
             [2, 4, 6, 8, 10]

    assert [%{phase: :ready}] = Bridge.workers(Streams)
  end

  test "an enumerable that raises makes the handler's iterator raise" do
    bad =
      Stream.map(1..10, fn
        5 -> raise "no five"
        x -> x
      end)

    assert {:error, e} = call(:total, [Bridge.Stream.from(bad)])
    assert e.kind == :python_exception and e.python_type == "beambridge.streams.StreamError"
    assert e.message =~ "no five"
  end

  test "kill -9 mid-stream, then resume: exactly the remaining elements" do
    clean = stream(:count, [12]) |> Enum.to_list()
    marker = marker()

    {first, error} = take_until_error(stream(:die_at, [12, 7, marker], window: 2))
    assert error.kind == :worker_died
    assert %Checkpoint{token: token, taken: taken, skip: 0} = error.checkpoint
    assert taken == length(first) and token == "#{taken}"

    rest = stream(:die_at, [12, 7, marker], resume: error.checkpoint) |> Enum.to_list()
    all = first ++ rest
    assert length(all) == 12

    assert Enum.map(all, &:binary.decode_unsigned(binary_part(&1, 0, 4), :little)) ==
             clean

    # the stream's own end check passed: its count and checksum continued the first's
    assert digest(all) == digest(stream(:die_at, [12, 100, marker]) |> Enum.to_list())
  end

  test "an element whose arena the interpreter took with it when it died: :worker_died" do
    # the element's new arena cannot be opened through /proc once the
    # interpreter is gone: that is the interpreter's death, not a bad frame
    {first, error} = take_until_error(stream(:die_after_big, [96 * 1_048_576], window: 2))
    assert error.kind == :worker_died
    assert error.checkpoint.taken == length(first) and length(first) in [1, 2]
  end

  test "kill -9 of the interpreter from outside, then resume: every element once, in order" do
    [%{os_pid: os_pid}] = Bridge.workers(Streams)
    parent = self()

    killer =
      spawn(fn ->
        receive do
          :kill -> System.cmd("kill", ["-9", Integer.to_string(os_pid)])
        end

        send(parent, :killed)
      end)

    enum =
      stream(:paced, [30, 0.02], window: 2)
      |> Stream.with_index()
      |> Stream.map(fn {x, i} ->
        if i == 5, do: send(killer, :kill)
        x
      end)

    {first, error} = take_until_error(enum)
    assert_received :killed
    assert error.kind == :worker_died and error.checkpoint.taken == length(first)

    {rest, _log} =
      with_log(fn -> stream(:paced, [30, 0.0], resume: error.checkpoint) |> Enum.to_list() end)

    numbers = Enum.map(first ++ rest, &:binary.decode_unsigned(&1, :little))
    assert numbers == Enum.to_list(0..29)
  end

  test "resume: :auto resumes by itself, and sparse checkpoints skip what was taken" do
    marker = marker()

    {all, log} =
      with_log(fn -> stream(:die_at, [10, 4, marker], resume: :auto) |> Enum.to_list() end)

    # killed (SIGKILL): its exit status, or EPIPE when an ack was written to it
    # first (then no status follows; Bridge.Worker)
    assert log =~ ~r/exited with status (137|\{:port_closed, :epipe\})/
    assert length(all) == 10
    assert digest(all) == digest(stream(:die_at, [10, 100, marker]) |> Enum.to_list())

    # a checkpoint every 4th element: a resume after 6 taken starts at token "4", skipping 2
    first = stream(:sparse, [10, 4]) |> Enum.take(6)
    point = %Checkpoint{token: "4", taken: 6, skip: 2, checksum: checksum_of(first)}
    assert stream(:sparse, [10, 4], resume: point) |> Enum.to_list() == [6, 7, 8, 9]
  end

  test "a mutated chunk is detected" do
    error =
      assert_raise Bridge.Error, fn ->
        capture_log(fn -> stream(:mutate_after_checksum, [4, 200_000]) |> Enum.to_list() end)
      end

    assert error.reason == :checksum_mismatch
    assert error.checkpoint.taken == 1
    assert stream(:count, [2]) |> Enum.to_list() == [0, 1]
  end

  test "a duplicated element and a wrong end checksum are typed errors" do
    {error, log} =
      with_log(fn ->
        assert_raise Bridge.Error, fn -> stream(:forge_duplicate, []) |> Enum.to_list() end
      end)

    assert {error.kind, error.reason} == {:bad_frame, :stream_broken}
    assert error.message =~ "element 1 of the result stream came after 1"
    assert log =~ "killing it"
    all_ready(Streams, 1)

    error = assert_raise Bridge.Error, fn -> stream(:forge_checksum, [5]) |> Enum.to_list() end
    assert {error.kind, error.reason} == {:bad_frame, :stream_broken}
    assert error.checkpoint.taken == 5
    assert stream(:count, [2]) |> Enum.to_list() == [0, 1]
  end

  test "timeout: applies to each element" do
    # 1.8 s in all, 0.3 s an element
    assert stream(:slow, [6, 0.3], timeout: 1_000) |> Enum.to_list() == Enum.to_list(0..5)

    log =
      capture_log(fn ->
        error =
          assert_raise Bridge.Error, fn ->
            stream(:slow, [3, 3.0], timeout: 500) |> Enum.to_list()
          end

        assert error.kind == :timeout
        all_ready(Streams, 1)
      end)

    assert log =~ "timed out"
  end

  test "a caller killed mid-stream leaks nothing" do
    :erlang.garbage_collect()
    before = arena_in_use()

    consumer =
      spawn(fn ->
        stream(:blobs, [1_000, 1024 * 1024])
        |> Stream.each(fn _ -> Process.sleep(5) end)
        |> Stream.run()
      end)

    Process.sleep(300)
    Process.exit(consumer, :kill)
    eventually(fn -> match?([%{phase: :ready}], Bridge.workers(Streams)) end)
    Enum.each(Process.list(), &:erlang.garbage_collect/1)

    eventually(fn -> call(:worker_memory, []) |> elem(1) |> Map.fetch!("lent") == 0 end)
    assert [%{lent_slices: 0}] = Bridge.workers(Streams)
    assert arena_in_use() == before
  end

  test "a binary too big for shared memory and a control frame goes as a stream of chunks" do
    start_supervised!(
      {Bridge, bridge_opts(Tight, pool_size: 1, arena_limit: 16 * 1024 * 1024)},
      id: :tight
    )

    Bridge.reset_format_stats()
    big = :crypto.strong_rand_bytes(80 * 1024 * 1024 + 3)
    sha = :crypto.hash(:sha256, big) |> Base.encode16(case: :lower)

    {result, log} =
      with_log(fn ->
        Bridge.call({:bbt_streams, :describe}, [big], pool: Tight, timeout: 60_000)
      end)

    assert result == {:ok, ["bytes", byte_size(big), sha]}
    # logged at most once a second per cause
    assert log == "" or log =~ "went as a stream of chunks (too_large)"

    assert {:ok, ["memoryview", _, ^sha]} =
             Bridge.call({:bbt_streams, :describe}, [Bridge.Buffer.new(big)], pool: Tight)

    chunked = for %{reason: :chunked} = d <- Bridge.format_stats(), do: {d.form, d.count, d.bytes}
    assert Enum.sort(chunked) == [{:buffer, 1, byte_size(big)}, {:raw, 1, byte_size(big)}]
    assert [%{phase: :ready, lent_slices: 0}] = Bridge.workers(Tight)
  end

  test "a binary that finds the arenas full and is too big for a frame goes in chunks" do
    start_supervised!(
      {Bridge, bridge_opts(Full, pool_size: 1, arena_limit: 128 * 1024 * 1024)},
      id: :full
    )

    # another caller holds 100 MiB of the pool's 128: 80 MiB more find no room
    {:ok, held} =
      Bridge.Arena.put(Bridge.Config.get(Full).arena, :binary.copy("h", 100 * 1024 * 1024), [])

    big = :binary.copy("b", 80 * 1024 * 1024)

    Bridge.reset_format_stats()
    {result, log} = with_log(fn -> Bridge.call({:bbt_streams, :length}, [big], pool: Full) end)
    assert result == {:ok, byte_size(big)}
    assert log == "" or log =~ "went as a stream of chunks (arena_full)"
    chunked = for %{reason: :chunked} = d <- Bridge.format_stats(), do: {d.direction, d.count}
    assert chunked == [{:to_python, 1}]
    Bridge.Arena.release(held)
  end

  test "bad options are typed errors" do
    for {opts, field} <- [
          {[window: 0], :window},
          {[resume: 3], :resume},
          {[max_resumes: -1], :max_resumes}
        ] do
      error = assert_raise Bridge.Error, fn -> stream(:count, [1], opts) |> Enum.to_list() end
      assert {error.kind, error.field} == {:bad_call, field}
    end

    error = assert_raise Bridge.Error, fn -> stream(:count, [], []) |> Enum.to_list() end
    assert error.kind == :python_exception

    assert_raise ArgumentError, fn -> Bridge.Stream.from([], window: 2_000) end

    # a stream inside a stream's element cannot be sent: the iterator raises
    assert {:error, e} = call(:total, [Bridge.Stream.from([1, Bridge.Stream.from([2])])])
    assert e.kind == :python_exception and e.message =~ "element 2 cannot be sent"
  end

  # The elements a stream gave before it raised, and the error (an interpreter's
  # death: its worker is ready again when this returns).
  defp take_until_error(enum) do
    ref = make_ref()

    {error, _log} =
      with_log(fn ->
        try do
          Enum.each(enum, &send(self(), {ref, &1}))
          flunk("the stream ended without an error")
        rescue
          e in Bridge.Error ->
            # the worker's log of the death comes with its restart
            all_ready(Streams, 1)
            e
        end
      end)

    {collect(ref, []), error}
  end

  defp collect(ref, acc) do
    receive do
      {^ref, x} -> collect(ref, [x | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  # a file that tells die_at it has killed its interpreter once already,
  # unique to this run and removed after the test
  defp marker do
    name = "bb_die_#{System.pid()}_#{System.unique_integer([:positive])}"
    path = Path.join(System.tmp_dir!(), name)
    on_exit(fn -> File.rm(path) end)
    path
  end

  defp digest(binaries), do: :crypto.hash(:sha256, binaries)

  defp checksum_of(values) do
    values
    |> Enum.with_index(1)
    |> Enum.reduce(0, fn {v, seq}, acc ->
      Bridge.Stream.chain(acc, seq, :erlang.term_to_binary(v))
    end)
  end

  defp arena_in_use do
    {:ok, stats} = Bridge.Arena.stats(Bridge.Config.get(Streams).arena)
    stats.live
  end
end
