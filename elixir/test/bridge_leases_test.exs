defmodule Bridge.LeasesTest do
  # Invariant 1 (a BEAM binary never changes) and leases on slices
  # (protocol/SPEC.md §4): a result slice is reused only after the caller
  # let go of it; a handler that keeps a view of its argument never sees it
  # change; the bounds of :arena_limit.
  use ExUnit.Case, async: false

  import Bitwise
  import Bridge.Test.BridgeCase

  @moduletag timeout: 120_000
  @threshold 65_536

  setup do
    start_supervised!({Bridge, bridge_opts(Lease1, pool_size: 1)})
    :ok
  end

  defp call(fun, args), do: Bridge.call({:bbt_handlers, fun}, args, pool: Lease1)

  defp worker_arenas, do: memfd_mappings(hd(worker_os_pids(Lease1)))

  test "once the caller drops a result, its slice is reused: the worker's arenas do not grow" do
    for i <- 1..200 do
      {:ok, result} = call(:make_counter_bytes, [@threshold, i])
      assert binary_part(result, 0, 8) == <<i::little-64>>
    end

    # 200 results of 64 KiB, none kept: far less than 200 slices' worth of arenas
    assert worker_arenas() <= 2
    [%{worker_arenas: mapped}] = Bridge.workers(Lease1)
    assert mapped <= 2
  end

  test "a held zero-copy result stays byte-identical while 1,000 further calls run" do
    size = 2 * @threshold
    {:ok, held} = call(:make_counter_bytes, [size, 0])
    copy = :binary.copy(held)
    assert_shared_binary(held)

    for i <- 1..1_000 do
      {:ok, result} = call(:make_counter_bytes, [size, i])
      assert binary_part(result, 0, 8) == <<i::little-64>>
    end

    assert held == copy
    assert binary_part(held, 0, 8) == <<0::little-64>>
    assert worker_arenas() <= 4
  end

  test "a handler that keeps its memoryview argument never sees it change: the slice stays lent" do
    size = 4 * @threshold
    first = :binary.copy(<<1>>, size)
    {:ok, digest} = call(:keep, [Bridge.Buffer.new(first)])
    assert digest == Base.encode16(:crypto.hash(:sha256, first), case: :lower)
    [%{lent_slices: 1}] = Bridge.workers(Lease1)

    for i <- 2..20 do
      data = :binary.copy(<<i>>, size)
      assert {:ok, ^data} = call(:identity, [Bridge.Buffer.new(data)])
      assert {:ok, ^data} = call(:identity, [data])
      assert {:ok, ^digest} = call(:kept_digest, [0])
    end

    [%{lent_slices: 1}] = Bridge.workers(Lease1)

    # when the handler lets go, the lease ends with that call's answer
    assert {:ok, 0} = call(:drop_kept, [])
    eventually(fn -> match?([%{lent_slices: 0}], Bridge.workers(Lease1)) end)
    {:ok, %{live: 0}} = Bridge.Arena.stats(Bridge.Config.get(Lease1).arena)
  end

  test "a kept ndarray view is protected the same way" do
    size = 2 * @threshold
    t = Bridge.Tensor.new!(:binary.copy(<<9>>, size), {:u, 8}, {size})
    {:ok, digest} = call(:keep, [t])

    for i <- 1..10 do
      other = Bridge.Tensor.new!(:binary.copy(<<i>>, size), {:u, 8}, {size})
      assert {:ok, ^other} = call(:identity, [other])
    end

    assert {:ok, ^digest} = call(:kept_digest, [0])
    assert {:ok, 0} = call(:drop_kept, [])
  end

  test "a memoryview the handler returns comes back as a view of the argument, no copy" do
    data = :crypto.strong_rand_bytes(4 * @threshold)
    {:ok, back} = call(:identity, [Bridge.Buffer.new(data)])
    assert back == data
    # over this node's own arena (read-write here), not a worker's
    {:ok, address} = Bridge.NIF.binary_address(back)
    assert mapping_of(address) =~ "/memfd:beambridge"
    assert mapping_flags(address) =~ ~r/^rw-s/
    # the slice lives as long as the binary does, and not longer
    {:ok, %{live: 1}} = Bridge.Arena.stats(Bridge.Config.get(Lease1).arena)
    assert :binary.last(back) == :binary.last(data)
    :erlang.garbage_collect()

    eventually(fn ->
      match?({:ok, %{live: 0}}, Bridge.Arena.stats(Bridge.Config.get(Lease1).arena))
    end)
  end

  test "a caller that loops over large results and never collects does not fill the arenas" do
    # The worker's arenas hold 256 MiB of results; each is 80 MiB, too big for a control
    # frame, so nothing can go inline. A process whose binary heap limit is high (as it
    # grows in a process that has seen large binaries) does not collect on its own: the
    # bridge collects for it before a call once it has received a quarter of the limit.
    start_supervised!(
      {Bridge, bridge_opts(Looper, pool_size: 1, arena_limit: 256 * 1_048_576)},
      id: :looper
    )

    size = 80 * 1_048_576
    parent = self()

    {pid, ref} =
      :erlang.spawn_opt(
        fn ->
          results =
            for i <- 1..10 do
              case Bridge.call({:bbt_handlers, :make_counter_bytes}, [size, i], pool: Looper) do
                {:ok, <<^i::little-64, _::binary>> = bin} -> byte_size(bin)
                {:error, e} -> {i, e.reason}
              end
            end

          send(parent, {:results, results})
        end,
        [:monitor, min_bin_vheap_size: 1 <<< 30]
      )

    assert_receive {:results, results}, 60_000
    assert_receive {:DOWN, ^ref, :process, ^pid, :normal}
    assert results == List.duplicate(size, 10)
    assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Looper)
  end

  test "results that go inline because the worker's arenas are full are counted here too" do
    start_supervised!(
      {Bridge, bridge_opts(FullResults, pool_size: 1, arena_limit: 8 * 1_048_576)},
      id: :full_results
    )

    Bridge.reset_format_stats()
    size = 3_000_000

    # held here: the worker's 8 MiB of arenas hold two of them, the rest go inline
    {held, log} =
      ExUnit.CaptureLog.with_log(fn ->
        for i <- 1..4 do
          {:ok, result} =
            Bridge.call({:bbt_handlers, :make_counter_bytes}, [size, i], pool: FullResults)

          assert <<^i::little-64, _::binary>> = result
          result
        end
      end)

    assert log =~ "no slice (arena_full"

    stats = Bridge.format_stats()

    assert %{count: 2, bytes: 6_000_000} =
             Enum.find(
               stats,
               &match?(%{direction: :from_python, form: :raw, reason: :arena_full}, &1)
             )

    assert %{count: 2} =
             Enum.find(
               stats,
               &match?(%{direction: :from_python, form: :raw_slice, reason: :received}, &1)
             )

    assert length(held) == 4
  end

  test "past :arena_limit values go inline with a warning, counted; too big for a frame: chunked or refused" do
    start_supervised!(
      {Bridge, bridge_opts(Limited, pool_size: 1, arena_limit: 2_097_152, min_arena: 1_048_576)},
      id: :limited
    )

    Bridge.reset_format_stats()
    big = :binary.copy("L", 3_000_000)

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        assert {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: Limited)
      end)

    assert log =~ "went inline" and log =~ "too_large" and log =~ ":arena_limit"

    assert Enum.any?(
             Bridge.format_stats(),
             &match?(%{direction: :to_python, form: :raw, reason: :too_large, count: 1}, &1)
           )

    # too big for a frame too: a binary goes as a stream of chunks, both ways
    # (SPEC §8.6); a bundle of tensors is refused, naming the bound
    x = :binary.copy("x", 70_000_000)

    ExUnit.CaptureLog.capture_log(fn ->
      assert {:ok, ^x} = Bridge.call({:bbt_handlers, :identity}, [x], pool: Limited)
    end)

    bundle = Bridge.Tensor.Bundle.new!(%{"x" => Bridge.Tensor.new!(x, {:u, 8}, {70_000_000})})
    {:error, e} = Bridge.call({:bbt_handlers, :identity}, [bundle], pool: Limited)
    assert {e.kind, e.reason, e.field} == {:bad_call, :too_large, :arena_limit}
    assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Limited)
  end
end
