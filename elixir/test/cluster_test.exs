defmodule Bridge.ClusterTest do
  # Calls across nodes (protocol/SPEC.md §15) with real peer nodes on localhost:
  # this node (no pool of its own for BbtCluster), peers `a` and `b` running
  # BbtCluster (and BbtSpill, one worker and no queue each), and peer `c`
  # running none. Each call says which worker ran it by the worker's OS pid.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  alias Bridge.Test.Peers

  @moduletag timeout: 600_000

  doctest Bridge.Cluster
  doctest Bridge.Handle
  @pool BbtCluster
  @spill BbtSpill

  setup_all do
    undo = Peers.distribute!()
    [{pa, a}, {pb, b}, {pc, c}] = for n <- [:bbt_a, :bbt_b, :bbt_c], do: Peers.start!(n)

    for node <- [a, b] do
      {:ok, _} = :erpc.call(node, Peers, :start_pool, [bridge_opts(@pool, pool_size: 1)])

      {:ok, _} =
        :erpc.call(node, Peers, :start_pool, [
          bridge_opts(@spill, pool_size: 1, max_queue: 0, min_arena: 1_048_576)
        ])
    end

    true = Peers.until(fn -> Bridge.Cluster.nodes(@pool) == Enum.sort([a, b]) end)

    on_exit(fn ->
      Enum.each([pa, pb, pc], &Peers.stop/1)
      undo.()
    end)

    %{a: a, b: b, c: c, pids: %{a: worker_pids(a, @pool), b: worker_pids(b, @pool)}}
  end

  defp worker_pids(node, pool),
    do: for(w <- :erpc.call(node, Bridge, :workers, [pool]), do: w.os_pid)

  defp pid_call(opts \\ []), do: Bridge.call({:bbt_handlers, :pid}, [], [pool: @pool] ++ opts)

  test "a node without workers reaches another node's pool", ctx do
    served =
      for _ <- 1..20 do
        assert {:ok, pid} = pid_call()
        pid
      end

    assert MapSet.subset?(MapSet.new(served), MapSet.new(ctx.pids.a ++ ctx.pids.b))

    # from peer c, which runs no pool either
    assert {:ok, pid} =
             :erpc.call(ctx.c, Bridge, :call, [{:bbt_handlers, :pid}, [], [pool: @pool]])

    assert pid in (ctx.pids.a ++ ctx.pids.b)

    # node: n sends it to n
    assert {:ok, pid} = pid_call(node: ctx.b)
    assert pid in ctx.pids.b
  end

  test "a local pool is preferred", ctx do
    for _ <- 1..20 do
      assert {:ok, pid} =
               :erpc.call(ctx.a, Bridge, :call, [{:bbt_handlers, :pid}, [], [pool: @pool]])

      assert pid in ctx.pids.a
    end
  end

  test "an overloaded pool spills to another node's", ctx do
    # a's only worker busy and no room in its queue: a's next call goes to b
    busy =
      :erpc.send_request(ctx.a, Bridge, :call, [{:bbt_handlers, :sleep}, [1.5], [pool: @spill]])

    Process.sleep(300)

    assert {:ok, pid} =
             :erpc.call(ctx.a, Bridge, :call, [{:bbt_handlers, :pid}, [], [pool: @spill]])

    assert pid in worker_pids(ctx.b, @spill)

    # node: a is not spilled
    assert {:error, %Bridge.Error{kind: :overloaded}} =
             :erpc.call(ctx.a, Bridge, :call, [
               {:bbt_handlers, :pid},
               [],
               [pool: @spill, node: ctx.a]
             ])

    assert {:response, {:ok, _}} = :erpc.wait_response(busy, 5_000)
  end

  test "a 256 MiB tensor crosses nodes bit-exact, both ways", ctx do
    data = :crypto.strong_rand_bytes(256 * 1_048_576)
    tensor = Bridge.Tensor.new!(data, {:u, 8}, {256, 1_048_576})

    assert {:ok, %Bridge.Tensor{} = back} =
             Bridge.call({:bbt_handlers, :identity}, [tensor],
               pool: @pool,
               node: ctx.a,
               timeout: 60_000
             )

    assert back.shape == {256, 1_048_576} and back.dtype == {:u, 8}
    assert back.data == data
  end

  test "every compression setting carries compressible data both ways", ctx do
    data = :binary.copy("beambridge compresses this line; ", 200_000)

    for setting <- [:none, :lz4, :zstd, :gzip, :auto] do
      assert {:ok, ^data} =
               Bridge.call({:bbt_handlers, :identity}, [data],
                 pool: @pool,
                 node: ctx.b,
                 compress: setting
               )
    end
  end

  test "a corrupted compressed payload is a typed error and the worker is kept", ctx do
    data = :binary.copy("0123456789abcdef", 100_000)
    [before] = worker_pids(ctx.a, @pool)

    {:ok, [{:"$bb_frame", frame}], _} = Bridge.Remote.Wire.pack([data], :lz4, 1.0e9)
    flipped = flip(frame, 128 + div(byte_size(frame) - 128, 2))
    {:ok, compressed} = Bridge.Codec.compress(:lz4_frame, data)
    cut = binary_part(compressed, 0, byte_size(compressed) - 100)
    truncated = wire_frame(cut, byte_size(data))
    lying = wire_frame(compressed, byte_size(data) + 1)

    # a frame cut short fails its header's checks
    assert {:error, %Bridge.Error{kind: :bad_frame, reason: :payload_out_of_bounds}} =
             :erpc.call(ctx.a, Bridge.Remote, :serve, [
               {:bbt_handlers, :identity},
               [{:"$bb_frame", binary_part(frame, 0, byte_size(frame) - 100)}],
               [pool: @pool, node: ctx.a],
               {self(), :lz4, make_ref()}
             ])

    for bad <- [flipped, truncated, lying] do
      assert {:error, %Bridge.Error{kind: :bad_frame, reason: :bad_compressed_data}} =
               :erpc.call(ctx.a, Bridge.Remote, :serve, [
                 {:bbt_handlers, :identity},
                 [{:"$bb_frame", bad}],
                 [pool: @pool, node: ctx.a],
                 {self(), :lz4, make_ref()}
               ])
    end

    assert {:ok, ^data} =
             Bridge.call({:bbt_handlers, :identity}, [data], pool: @pool, node: ctx.a)

    assert worker_pids(ctx.a, @pool) == [before]
  end

  test "streams cross nodes, chunk by chunk, and stop early", ctx do
    elements =
      Bridge.stream({:bbt_streams, :count}, [50], pool: @pool, node: ctx.b, compress: :lz4)
      |> Enum.to_list()

    assert elements == Enum.to_list(0..49)

    blobs =
      Bridge.stream({:bbt_streams, :blobs}, [3, 200_000],
        pool: @pool,
        node: ctx.a,
        compress: :zstd
      )
      |> Enum.map(&byte_size/1)

    assert blobs == [200_000, 200_000, 200_000]

    assert [0, 1, 2] =
             Bridge.stream({:bbt_streams, :count}, [1_000_000], pool: @pool, node: ctx.a)
             |> Enum.take(3)

    # what was on its way when the consumer stopped does not stay in its mailbox,
    # and the relay there is gone
    refute_received {:bb_stream, _, _}
    assert Peers.until(fn -> :erpc.call(ctx.a, Peers, :relays, []) == 0 end)

    # a stream that cannot start there fails with that node's error
    assert_raise Bridge.Error, ~r/no_pool|window/, fn ->
      Bridge.stream({:bbt_streams, :count}, [3], pool: @pool, node: ctx.a, window: 0)
      |> Enum.to_list()
    end

    # an argument stream goes with the call and is fed from the pool's node
    chunks = for i <- 1..20, do: :binary.copy(<<i>>, 100_000)
    expected = :crypto.hash(:sha256, chunks) |> Base.encode16(case: :lower)

    assert {:ok, ^expected} =
             Bridge.call({:bbt_streams, :sha256}, [Bridge.Stream.from(chunks)],
               pool: @pool,
               node: ctx.b
             )

    # the relay and the stream on a are gone: the next call on a's only worker works
    assert {:ok, _} = pid_call(node: ctx.a)
  end

  test "a suspended node fails its calls with :node_down within the bound, and routing heals",
       ctx do
    {peer, d} = Peers.start!(:bbt_d)
    {:ok, _} = :erpc.call(d, Peers, :start_pool, [bridge_opts(@pool, pool_size: 1)])
    assert Peers.until(fn -> d in Bridge.Cluster.nodes(@pool) end)
    os_pid = Peers.os_pid(d)

    try do
      # the caller lives on after the call, so what it owns is not let go by its exit
      test = self()

      caller =
        spawn(fn ->
          started = System.monotonic_time(:millisecond)

          result =
            Bridge.call({:bbt_handlers, :sleep}, [4, "late"],
              pool: @pool,
              node: d,
              node_timeout: 1_000,
              timeout: 60_000,
              result: :handle
            )

          send(test, {:called, result, System.monotonic_time(:millisecond) - started})
          receive do: (:stop -> :ok)
        end)

      on_exit(fn -> send(caller, :stop) end)
      Process.sleep(300)
      {_, 0} = System.cmd("kill", ["-STOP", "#{os_pid}"])
      assert_receive {:called, result, elapsed}, 10_000

      assert {:error, %Bridge.Error{kind: :node_down, reason: :node_down, value: ^d}} = result
      # suspended after 300 ms, silent for 1,000: failed before its 4 s of sleep
      assert elapsed < 300 + 1_000 + 1_500

      # while d is silent, routing skips it
      for _ <- 1..10 do
        assert {:ok, pid} = pid_call(node_timeout: 1_000)
        assert pid in (ctx.pids.a ++ ctx.pids.b)
      end

      {_, 0} = System.cmd("kill", ["-CONT", "#{os_pid}"])
      [d_pid] = worker_pids(d, @pool)

      assert Peers.until(
               fn -> match?({:ok, ^d_pid}, pid_call(node_timeout: 1_000)) end,
               20_000
             )

      # the call given up on finished there after all (its worker took this
      # call after it) and kept nothing for its caller
      assert :erpc.call(d, Bridge.Handle, :count, []) == 0
    after
      System.cmd("kill", ["-CONT", "#{os_pid}"])
      Peers.stop(peer)
    end
  end

  test "a killed node gives :node_down at once; retry: n goes to another node", ctx do
    {peer, d} = Peers.start!(:bbt_e)
    {:ok, _} = :erpc.call(d, Peers, :start_pool, [bridge_opts(@pool, pool_size: 1)])
    assert Peers.until(fn -> d in Bridge.Cluster.nodes(@pool) end)
    os_pid = Peers.os_pid(d)

    try do
      plain =
        Task.async(fn ->
          timed(fn ->
            Bridge.call({:bbt_handlers, :sleep}, [20], pool: @pool, node: d, timeout: 60_000)
          end)
        end)

      retried =
        Task.async(fn ->
          Bridge.call({:bbt_handlers, :sleep}, [2, "again"],
            pool: @pool,
            node: d,
            retry: 1,
            timeout: 60_000
          )
        end)

      Process.sleep(300)
      {_, 0} = System.cmd("kill", ["-KILL", "#{os_pid}"])

      {result, elapsed} = Task.await(plain, 10_000)
      assert {:error, %Bridge.Error{kind: :node_down}} = result
      assert elapsed < 300 + 2_000

      # the idempotent call ran again on a or b
      assert {:ok, "again"} = Task.await(retried, 10_000)

      assert Peers.until(fn -> d not in Bridge.Cluster.nodes(@pool) end)
      assert {:ok, pid} = pid_call()
      assert pid in (ctx.pids.a ++ ctx.pids.b)
    after
      Peers.stop(peer)
    end
  end

  test "a result handle is read where it is kept: it never travels through the caller", ctx do
    big = 40_000_000
    opts = [pool: @pool, timeout: 60_000]

    assert {:ok, %Bridge.Handle{node: a} = handle} =
             Bridge.call(
               {:bbt_handlers, :make_bytes},
               [big, 3],
               [node: ctx.a, result: :handle] ++ opts
             )

    assert a == ctx.a
    expected = :crypto.hash(:sha256, :binary.copy(<<3>>, big)) |> Base.encode16(case: :lower)

    # on the node that keeps it, and on another node: the caller's connections
    # carry a few bytes, not the 40 MB
    for node <- [ctx.a, ctx.b] do
      before = dist_bytes()

      assert {:ok, ^expected} =
               Bridge.call({:bbt_handlers, :digest}, [handle], [node: node] ++ opts)

      assert dist_bytes() - before < 1_000_000
    end

    # at any depth of the arguments
    assert {:ok, ^expected} =
             Bridge.call(
               {:bbt_handlers, :nested_digest},
               [%{"w" => [{handle}]}],
               [node: ctx.b] ++ opts
             )

    # fetched, it comes here once: as it is, or compressed (:auto, the default;
    # these bytes are all alike)
    before = dist_bytes()
    assert {:ok, bin} = Bridge.Handle.fetch(handle, compress: :none)
    assert bin == :binary.copy(<<3>>, big) and dist_bytes() - before > big
    before = dist_bytes()
    assert {:ok, ^bin} = Bridge.Handle.fetch(handle)
    assert dist_bytes() - before < div(big, 10)

    assert :erpc.call(ctx.a, Bridge.Handle, :count, []) >= 1
    :ok = Bridge.Handle.release(handle)
    assert Peers.until(fn -> :erpc.call(ctx.a, Bridge.Handle, :count, []) == 0 end)

    assert {:error, %Bridge.Error{kind: :bad_call, reason: :released_handle}} =
             Bridge.call({:bbt_handlers, :digest}, [handle], [node: ctx.b] ++ opts)

    assert {:error, %Bridge.Error{reason: :released_handle}} = Bridge.Handle.fetch(handle)
  end

  test "a handle's value goes when its owner exits", ctx do
    owner =
      spawn(fn ->
        {:ok, h} =
          Bridge.call({:bbt_handlers, :identity}, ["kept"],
            pool: @pool,
            node: ctx.b,
            result: :handle
          )

        send(:erlang.whereis(:bbt_cluster_test), {:handle, h})
        receive do: (:stop -> :ok)
      end)

    Process.register(self(), :bbt_cluster_test)
    assert_receive {:handle, handle}, 10_000
    assert {:ok, "kept"} = Bridge.Handle.fetch(handle)
    send(owner, :stop)
    assert Peers.until(fn -> match?({:error, _}, Bridge.Handle.fetch(handle)) end)
    Process.unregister(:bbt_cluster_test)
  end

  test "bad options are typed errors" do
    assert {:error, %Bridge.Error{field: :compress}} = pid_call(compress: :brotli)
    assert {:error, %Bridge.Error{field: :retry}} = pid_call(retry: -1)
    assert {:error, %Bridge.Error{field: :node_timeout}} = pid_call(node_timeout: 0)
    assert {:error, %Bridge.Error{field: :result}} = pid_call(result: :pointer)

    assert {:error, %Bridge.Error{reason: :no_pool, value: :"nobody@127.0.0.1"}} =
             pid_call(node: :"nobody@127.0.0.1")
  end

  # Bytes this node's distribution connections sent and received so far.
  defp dist_bytes do
    for {_node, port} <- :erlang.system_info(:dist_ctrl), is_port(port), reduce: 0 do
      acc ->
        {:ok, stats} = :inet.getstat(port, [:send_oct, :recv_oct])
        acc + stats[:send_oct] + stats[:recv_oct]
    end
  end

  defp timed(fun) do
    started = System.monotonic_time(:millisecond)
    result = fun.()
    {result, System.monotonic_time(:millisecond) - started}
  end

  defp wire_frame(payload, decoded_length) do
    Bridge.Header.encode_frame!(payload,
      codec: :lz4_frame,
      decoded_length: decoded_length,
      checksum: false
    )
  end

  defp flip(bin, at) do
    <<pre::binary-size(at), byte, post::binary>> = bin
    <<pre::binary, Bitwise.bxor(byte, 0x10), post::binary>>
  end
end
