defmodule Bridge.LeasesTest do
  # Invariant 1 (a BEAM binary never changes) and argument-region quarantine
  # (a handler that keeps a view of its argument never sees it change).
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  @moduletag timeout: 120_000
  @prefix "bbtlease"
  @threshold 65_536

  setup do
    start_supervised!({Bridge, bridge_opts(Lease1, @prefix, pool_size: 1)})
    :ok
  end

  defp call(fun, args), do: Bridge.call({:bbt_handlers, fun}, args, pool: Lease1)

  test "once the caller drops a result, its region is free for the next one" do
    # The Worker process handled the zero-copy binary too; it must not keep the
    # region leased after the caller has let go.
    for i <- 1..20 do
      {:ok, result} = call(:make_counter_bytes, [@threshold, i])
      assert binary_part(result, 0, 8) == <<i::little-64>>
      :erlang.garbage_collect()
    end

    [worker] = Bridge.workers(Lease1)
    result_regions = Enum.filter(shm_names(@prefix), &String.contains?(&1, "-#{worker.os_pid}-"))
    assert length(result_regions) == 1, inspect(result_regions)
  end

  test "a held zero-copy result stays byte-identical while 1,000 further calls reuse result regions" do
    size = 2 * @threshold
    {:ok, held} = call(:make_counter_bytes, [size, 0])
    copy = :binary.copy(held)
    assert_region_binary(held, @prefix)
    [worker] = Bridge.workers(Lease1)

    for i <- 1..1_000 do
      {:ok, result} = call(:make_counter_bytes, [size, i])
      # every call really produced new bytes in a region
      assert binary_part(result, 0, 8) == <<i::little-64>>
      if rem(i, 100) == 0, do: :erlang.garbage_collect()
    end

    assert held == copy
    assert binary_part(held, 0, 8) == <<0::little-64>>

    # regions were reused warm, not one per call
    result_regions = Enum.filter(shm_names(@prefix), &String.contains?(&1, "-#{worker.os_pid}-"))
    assert length(result_regions) in 1..8, inspect(result_regions)
  end

  test "a handler that keeps its memoryview argument never sees it change: the region is quarantined" do
    size = 4 * @threshold
    first = :binary.copy(<<1>>, size)
    {:ok, digest} = call(:keep, [Bridge.Buffer.new(first)])
    assert digest == Base.encode16(:crypto.hash(:sha256, first), case: :lower)
    [%{argument_regions: [kept_region]}] = Bridge.workers(Lease1)

    # later calls of the same size class would reuse that argument region
    for i <- 2..20 do
      data = :binary.copy(<<i>>, size)
      assert {:ok, ^data} = call(:identity, [Bridge.Buffer.new(data)])
      assert {:ok, ^data} = call(:identity, [data])
      assert {:ok, ^digest} = call(:kept_digest, [0])
    end

    [%{argument_regions: regions}] = Bridge.workers(Lease1)
    assert kept_region in regions
    assert length(regions) >= 2

    # when the handler lets go, the region can be written again
    assert {:ok, 0} = call(:drop_kept, [])

    for i <- 1..5,
        do: assert({:ok, _} = call(:identity, [Bridge.Buffer.new(:binary.copy(<<i>>, size))]))

    [%{argument_regions: after_drop}] = Bridge.workers(Lease1)
    assert length(after_drop) <= length(regions)
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

  test "argument regions stay within region_limit; past it values go inline with a warning" do
    start_supervised!(
      {Bridge, bridge_opts(Limited, @prefix, pool_size: 1, region_limit: 300_000)},
      id: :limited
    )

    big = :binary.copy("L", 200_000)

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        # 200_000 bytes need a 256 KiB class region (> the rest of the limit after a 64 KiB one)
        assert {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: Limited)

        assert {:ok, "bytes"} =
                 Bridge.call({:bbt_handlers, :type_name}, [:binary.copy("x", 400_000)],
                   pool: Limited
                 )
      end)

    assert log =~ "inline"
    [%{argument_regions: regions}] = Bridge.workers(Limited)
    total = regions |> Enum.map(&File.stat!("/dev/shm" <> &1).size) |> Enum.sum()
    assert total <= 300_000
  end
end
