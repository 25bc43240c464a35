defmodule Bridge.HostileTest do
  # What a handler running as the BEAM's user can and cannot do to shared memory
  # (protocol/SPEC.md §11, §12), and values bigger than the bridge can carry.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase
  import ExUnit.CaptureLog

  @moduletag timeout: 180_000
  @moduletag :capture_log
  @mib 1024 * 1024

  defp call(pool, fun, args, opts \\ []),
    do: Bridge.call({:bbt_hostile, fun}, args, [pool: pool, timeout: 30_000] ++ opts)

  test "a handler that truncates every shared object it can reach changes nothing, and the VM lives" do
    start_supervised!({Bridge, bridge_opts(HostTrunc, pool_size: 1)})
    {:ok, held} = Bridge.call({:bbt_handlers, :make_bytes}, [@mib, 7], pool: HostTrunc)
    {:ok, _} = Bridge.call({:bbt_handlers, :identity}, [:binary.copy("a", @mib)], pool: HostTrunc)

    assert {:ok, []} = call(HostTrunc, :truncate_everything, [])
    assert held == :binary.copy(<<7>>, @mib)
    big = :crypto.strong_rand_bytes(4 * @mib)
    assert {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: HostTrunc)
  end

  test "read-only argument views cannot be made writable by any trick" do
    start_supervised!({Bridge, bridge_opts(HostView, pool_size: 1)})

    assert {:ok, refused} =
             call(HostView, :write_through_view, [Bridge.Buffer.new(:binary.copy("v", @mib))])

    assert Enum.sort(refused) == ["base", "ctypes", "mprotect", "writeable"]
  end

  test "with untrusted: true, no binary the BEAM holds ever changes, whatever the handler does" do
    start_supervised!({Bridge, bridge_opts(HostUntrusted, pool_size: 1, untrusted: true)})
    # a second pool, whose lane no handler here scribbles on (the first pool's worker
    # may have spoiled its own, SPEC §8.5, §12: then it leaves on its next call)
    start_supervised!(
      {Bridge, bridge_opts(HostUntrustedEcho, pool_size: 1, untrusted: true)},
      id: :echo
    )

    held =
      for i <- 1..5 do
        {:ok, r} = call(HostUntrusted, :result_then_scribble, [2 * @mib, 0.05])
        assert_shared_binary(r)
        {:ok, address} = Bridge.NIF.binary_address(r)
        assert mapping_flags(address) =~ ~r/^r--s/
        {i, r}
      end

    # (the scribblers of those calls are done before the next argument is written:
    # arguments are theirs to spoil, SPEC §12; one may have spoiled the lane the
    # wait's own request came in: then the worker never sees it, or leaves, and
    # its threads go with it)
    case call(HostUntrusted, :scribblers_done, [], timeout: 5_000) do
      {:ok, true} -> :ok
      {:error, %Bridge.Error{kind: k}} -> assert k in [:worker_died, :bad_frame, :timeout]
    end

    all_ready(HostUntrusted, 1)

    # an echoed argument comes back as a copy: a handler could write the BEAM's own
    # arena (the scribbler below reaches the second pool's objects too)
    data = :crypto.strong_rand_bytes(@mib)

    {:ok, echoed} =
      Bridge.call({:bbt_handlers, :identity}, [Bridge.Buffer.new(data)], pool: HostUntrustedEcho)

    assert echoed == data
    refute mapping_of(elem(Bridge.NIF.binary_address(echoed), 1)) =~ "memfd:"

    # The scribbler also spoils its own worker's lane (SPEC §8.5, §12): then that
    # worker leaves (a batch it cannot read) or the BEAM refuses what it left there.
    case call(HostUntrusted, :scribble_everything, []) do
      {:ok, n} -> assert n > 0, "the handler found nothing to scribble on"
      {:error, %Bridge.Error{kind: kind}} -> assert kind in [:worker_died, :bad_frame]
    end

    Process.sleep(300)

    for {_i, r} <- held, do: assert(r == :binary.copy(<<1>>, 2 * @mib))
    assert echoed == data
  end

  test "without untrusted, a scribbling handler may change a result it returned, never crash the VM" do
    start_supervised!({Bridge, bridge_opts(HostTrusted, pool_size: 1)})

    case call(HostTrusted, :result_then_scribble, [2 * @mib, 0.05]) do
      {:ok, r} ->
        Process.sleep(300)
        # the bytes may have changed (documented); reading them is safe either way
        assert byte_size(r) == 2 * @mib
        assert is_integer(:erlang.phash2(r))

      # on a slow moment the scribbler reaches the result's header before the BEAM
      # reads it: the frame is refused and the worker replaced
      {:error, %Bridge.Error{kind: :bad_frame}} ->
        :ok
    end

    assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: HostTrusted)
  end

  test "a 3 GiB argument goes as a stream of chunks, and the BEAM does not grow for it" do
    start_supervised!({Bridge, bridge_opts(HostHuge, pool_size: 1, timeout: 120_000)})
    Bridge.reset_format_stats()
    huge = :binary.copy(<<0>>, 3 * 1024 * @mib)
    parent = self()
    before = :erlang.memory(:total)

    sampler =
      spawn_link(fn ->
        peak = sample_memory(before)
        send(parent, {:peak, peak})
      end)

    # a Buffer: Python gets a memoryview over the joined chunks (a bytes object
    # would be one copy more, 6 GiB in the worker for a moment)
    {result, log} =
      with_log(fn ->
        Bridge.call({:bbt_streams, :length}, [Bridge.Buffer.new(huge)], pool: HostHuge)
      end)

    send(sampler, :stop)
    assert_receive {:peak, peak}, 5_000

    assert result == {:ok, 3 * 1024 * @mib}
    # logged at most once a second per cause: counted always
    assert is_binary(log)
    assert %{count: 1} = Enum.find(Bridge.format_stats(), &(&1.reason == :chunked))
    assert peak - before < 64 * @mib, "the BEAM grew by #{div(peak - before, @mib)} MiB"
    assert byte_size(huge) == 3 * 1024 * @mib
  end

  defp sample_memory(peak) do
    receive do
      :stop -> peak
    after
      2 -> sample_memory(max(peak, :erlang.memory(:total)))
    end
  end

  test "a value over the control frame limit that no slice can take is refused, naming the bound" do
    start_supervised!(
      {Bridge, bridge_opts(HostSmall, pool_size: 1, arena_limit: 8 * @mib, min_arena: @mib)}
    )

    # binaries, tensors and tables go as streams of chunks instead (SPEC §8.6);
    # a bundle of tensors cannot
    tensor = Bridge.Tensor.new!(:binary.copy(<<0>>, 70 * @mib), {:u, 8}, {70 * @mib})
    bundle = Bridge.Tensor.Bundle.new!(%{"w" => tensor})

    log =
      capture_log(fn ->
        assert {:error, %Bridge.Error{reason: :too_large, field: :arena_limit}} =
                 Bridge.call({:bbt_handlers, :identity}, [bundle], pool: HostSmall)

        # the worker's result is too big for its arenas and for a frame: a typed error
        assert {:error, %Bridge.Error{kind: :bad_call} = e} =
                 Bridge.call({:bbt_handlers, :make_bundle}, [5 * @mib], pool: HostSmall)

        assert e.message =~ ":arena_limit"
      end)

    assert is_binary(log)
    assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: HostSmall)
  end

  test "binaries, tensors and tables too big for the arenas and a frame go both ways in chunks" do
    start_supervised!(
      {Bridge, bridge_opts(HostChunks, pool_size: 1, arena_limit: 8 * @mib, min_arena: @mib)}
    )

    Bridge.reset_format_stats()
    big = :crypto.strong_rand_bytes(70 * @mib + 5)

    {result, log} =
      with_log(fn ->
        Bridge.call({:bbt_handlers, :identity}, [[big, "x", big]], pool: HostChunks)
      end)

    assert {:ok, [^big, "x", ^big]} = result
    assert is_binary(log)

    assert {:ok, made} =
             Bridge.call({:bbt_handlers, :make_bytes}, [70 * @mib, 3], pool: HostChunks)

    assert byte_size(made) == 70 * @mib

    tensor = Bridge.Tensor.new!(big, {:u, 8}, {byte_size(big)})
    assert {:ok, ^tensor} = Bridge.call({:bbt_handlers, :identity}, [tensor], pool: HostChunks)

    table = Bridge.Table.from_columns!(%{"x" => Enum.to_list(1..9_000_000)})
    assert {:ok, back} = Bridge.call({:bbt_handlers, :identity}, [table], pool: HostChunks)
    assert Bridge.Table.column!(back, "x") == Enum.to_list(1..9_000_000)

    counts =
      for %{reason: :chunked} = d <- Bridge.format_stats(), do: {d.direction, d.form, d.count}

    assert Enum.sort(counts) == [
             {:from_python, :arrow, 1},
             {:from_python, :raw, 3},
             {:from_python, :tensor, 1},
             {:to_python, :arrow, 1},
             {:to_python, :raw, 2},
             {:to_python, :tensor, 1}
           ]

    assert [%{phase: :ready, lent_slices: 0}] = Bridge.workers(HostChunks)
  end

  test "an interpreter that dies while it is fed fails the call at once" do
    start_supervised!(
      {Bridge,
       bridge_opts(HostFed,
         pool_size: 1,
         arena_limit: 8 * @mib,
         min_arena: @mib,
         timeout: 120_000
       )}
    )

    chunk = :binary.copy("z", 4 * @mib)
    feed = Bridge.Stream.from(Stream.repeatedly(fn -> chunk end) |> Stream.take(100), window: 8)

    # the frames queued for it make the port fail (EPIPE), not exit with a status:
    # the call fails with :worker_died, not after its 120 s timeout
    {result, _log} =
      with_log(fn -> Bridge.call({:bbt_streams, :exit_after_first}, [feed], pool: HostFed) end)

    assert {:error, %Bridge.Error{kind: :worker_died}} = result
    all_ready(HostFed, 1)
    assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: HostFed)
  end
end
