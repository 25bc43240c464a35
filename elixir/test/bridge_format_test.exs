defmodule Bridge.FormatBridgeTest do
  # Format selection end to end (protocol/SPEC.md §10.1) through real workers:
  # number lists packed, record lists and column maps as records, in both
  # directions, inline (INL: threshold 1 TiB) and through slices (REG:
  # threshold 512 bytes: every packed list and records stream here is larger,
  # the small binaries inside ETF values are not), below and above the :auto minimums, and forced with
  # format: :packed / :arrow. The value each side gets is always the one plain
  # ETF (format: :etf) gives; the counters prove which form was used.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase
  import ExUnit.CaptureLog

  require Logger

  alias Bridge.Error

  @moduletag timeout: 300_000
  @moduletag :capture_log

  @inl BFmtInl
  @reg BFmtReg
  @u64_max Bitwise.bsl(1, 64) - 1

  setup_all do
    start_supervised!(
      {Bridge, bridge_opts(@inl, pool_size: 1, threshold: 1_099_511_627_776)},
      id: :inl
    )

    start_supervised!({Bridge, bridge_opts(@reg, pool_size: 1, threshold: 512)},
      id: :reg
    )

    :ok
  end

  setup do
    Bridge.reset_format_stats()
    :ok
  end

  defp call(pool, fun, args, format \\ :auto),
    do: Bridge.call({:bbt_formats, fun}, args, pool: pool, format: format, timeout: 60_000)

  defp stat(direction, form, reason) do
    Enum.find_value(Bridge.format_stats(), 0, fn
      %{direction: ^direction, form: ^form, reason: ^reason, count: c} -> c
      _ -> nil
    end)
  end

  defp forms(direction) do
    for %{direction: ^direction, form: form} <- Bridge.format_stats(), uniq: true, do: form
  end

  defp region(@reg, form), do: :"#{form}_slice"
  defp region(@inl, form), do: form

  defp rows(n, key) do
    for i <- 0..(n - 1)//1 do
      %{
        key.("id") => i,
        key.("x") => if(rem(i, 5) == 0, do: nil, else: i * 0.25),
        key.("ok") => rem(i, 2) == 0,
        key.("name") => if(rem(i, 7) == 0, do: nil, else: "r#{i}"),
        key.("raw") => <<rem(i, 256), 255>>,
        key.("none") => nil
      }
    end
  end

  defp columns(n, key) do
    rows = rows(n, key)
    for k <- ~w(id x ok name raw none), into: %{}, do: {key.(k), Enum.map(rows, & &1[key.(k)])}
  end

  @atom_key &String.to_existing_atom/1
  @bin_key &Function.identity/1

  ## Elixir -> Python

  # {value, the form :auto must choose, Python's shape of it}
  defp argument_cases do
    [
      {Enum.to_list(-300..300), :packed, "list[int]"},
      {Enum.map(1..1000, &(&1 * 70_000)), :packed, "list[int]"},
      {Enum.map(0..299, &(@u64_max - &1)), :packed, "list[int]"},
      {Enum.map(1..500, &(&1 / 3)), :packed, "list[float]"},
      {Enum.to_list(1..127), :etf, "list[int]"},
      {for(i <- 1..5000, do: rem(i, 256)), :packed, "list[int]"},
      {[1, 2.5, 3], :etf, "list[float|int]"},
      {rows(700, @atom_key), :records, nil},
      {rows(700, @bin_key), :records, nil},
      {rows(42, @atom_key), :etf, nil},
      {columns(700, @atom_key), :records, nil},
      {columns(10, @bin_key), :etf, nil},
      {%{"nested" => [Enum.to_list(1..400), rows(3, @bin_key)]}, :packed, nil}
    ]
  end

  test "a worker's {:fallbacks, ...} is counted whole, or refused whole when any of it is wrong" do
    Bridge.reset_format_stats()

    good = [
      {"raw", "arena_full", 2, 800},
      {"tensor", "no_tickets", 1, 64},
      {"raw", "arena_full", 1, 5}
    ]

    assert :ok = Bridge.FormatStats.worker_fallbacks(good)

    for bad <- [
          [{"raw", "arena_full", 1, 5} | :tail],
          [{"raw", "arena_full", 1, 5}, {"video", "arena_full", 1, 5}],
          [{"raw", "threshold", 1, 5}],
          [{:raw, "arena_full", 1, 5}],
          [{"raw", "arena_full", 1, -5}],
          {"raw", "arena_full", 1, 5}
        ] do
      assert :error = Bridge.FormatStats.worker_fallbacks(bad), inspect(bad)
    end

    counted = for %{direction: :from_python} = e <- Bridge.format_stats(), do: e

    assert Enum.sort_by(counted, & &1.form) == [
             %{direction: :from_python, form: :raw, reason: :arena_full, count: 3, bytes: 805},
             %{direction: :from_python, form: :tensor, reason: :no_tickets, count: 1, bytes: 64}
           ]
  end

  test "arguments: Python gets what plain ETF gives, from every form, inline and in slices" do
    for pool <- [@inl, @reg], {value, form, shape} <- argument_cases() do
      Bridge.reset_format_stats()
      assert {:ok, {etf_shape, etf_hash, _} = etf} = call(pool, :received, [value], :etf)
      if shape, do: assert(etf_shape == shape)

      # ETF forms only: the policy kept every list and map as it is
      refute Enum.any?(
               forms(:to_python),
               &(&1 in [:packed, :packed_slice, :records, :records_slice])
             )

      assert {:ok, ^etf} = call(pool, :received, [value], :auto),
             "#{inspect(pool)} #{inspect(value, limit: 3)}"

      case form do
        :etf ->
          refute Enum.any?(
                   forms(:to_python),
                   &(&1 in [:packed, :packed_slice, :records, :records_slice])
                 )

        form ->
          assert stat(:to_python, region(pool, form), :auto) >= 1,
                 "#{inspect(pool)}: #{inspect(value, limit: 3)} did not go #{form}: " <>
                   inspect(Bridge.format_stats())
      end

      forced = if is_list(value) and match?([%{} | _], value), do: :arrow, else: :packed
      forced = if is_map(value) and not Map.has_key?(value, "nested"), do: :arrow, else: forced
      assert {:ok, {_, ^etf_hash, _}} = call(pool, :received, [value], forced)
    end
  end

  test "arguments: forced formats pack small values too, Python still gets lists and dicts" do
    for pool <- [@inl, @reg] do
      # 100 elements (below the :auto minimum), 800 bytes as <i8
      small = Enum.map(1..100, &(&1 * 10_000_000_000))
      {:ok, etf} = call(pool, :received, [small], :etf)
      assert {:ok, ^etf} = call(pool, :received, [small], :auto)
      refute Enum.any?(forms(:to_python), &(&1 in [:packed, :packed_slice]))
      assert {:ok, ^etf} = call(pool, :received, [small], :packed)
      assert stat(:to_python, region(pool, :packed), :forced) == 1

      value = [%{a: 1, b: "x"}, %{a: nil, b: nil}]
      {:ok, etf} = call(pool, :received, [value], :etf)
      assert {:ok, ^etf} = call(pool, :received, [value], :arrow)
      assert {"list[dict[Atom:NoneType]|dict[Atom:bytes|Atom:int]]", _, _} = etf
      assert stat(:to_python, region(pool, :records), :forced) == 1
      Bridge.reset_format_stats()
    end
  end

  test "arguments: maps and lists of maps in a column reach Python as the dicts ETF gives" do
    for pool <- [@inl, @reg] do
      value =
        for i <- 1..300 do
          %{
            id: i,
            user: if(rem(i, 4) == 0, do: nil, else: %{"name" => "u#{i}", "w" => i * 0.5}),
            items: if(rem(i, 3) == 0, do: nil, else: [%{sku: "s#{i}", qty: i}, nil]),
            empty: []
          }
        end

      {:ok, etf} = call(pool, :received, [value], :etf)
      assert {:ok, ^etf} = call(pool, :received, [value], :arrow)
      assert {:ok, ^etf} = call(pool, :received, [value], :auto)
      assert stat(:to_python, region(pool, :records), :forced) == 1
      assert stat(:to_python, region(pool, :records), :auto) == 1
      Bridge.reset_format_stats()
    end
  end

  test "arguments: a worker older than protocol 2.6 gets struct and list columns as ETF" do
    value = for i <- 1..300, do: %{id: i, user: %{name: "u#{i}"}}
    ref = Bridge.Config.get(@inl).peer_minor
    minor = :atomics.get(ref, 1)
    assert minor >= 7
    {:ok, etf} = call(@inl, :received, [value], :etf)

    try do
      :atomics.put(ref, 1, 5)
      assert {:ok, ^etf} = call(@inl, :received, [value], :auto)
      assert stat(:to_python, :records, :auto) == 0

      assert {:error, %Error{reason: :format_unsuitable, value: :nested_value} = e} =
               call(@inl, :received, [value], :arrow)

      assert e.message =~ "older than 2.6"
      # flat records still go as records
      flat = for i <- 1..300, do: %{id: i, name: "u#{i}"}
      assert {:ok, _} = call(@inl, :received, [flat], :auto)
      assert stat(:to_python, :records, :auto) == 1
    after
      :atomics.put(ref, 1, minor)
      Bridge.reset_format_stats()
    end
  end

  test "arguments: a forced format refuses what it cannot send, before calling Python" do
    [before] = worker_os_pids(@inl)

    for {value, reason} <- [
          {[%{a: 1}, %{b: 2}], :different_keys},
          {[%{a: 1}, %{a: "x"}], :mixed_kinds},
          {[%{a: Bitwise.bsl(1, 63)}], :integer_range},
          {%{a: [[1]]}, :nested_value}
        ] do
      assert {:error, %Error{kind: :bad_call, reason: :format_unsuitable, value: ^reason} = e} =
               call(@inl, :received, [value], :arrow)

      assert e.message =~ "format: :auto"
      # the same value is fine as ETF
      assert {:ok, _} = call(@inl, :received, [value], :auto)
    end

    assert {:error, %Error{kind: :bad_call, reason: :bad_option, field: :format}} =
             call(@inl, :received, [1], :json)

    assert worker_os_pids(@inl) == [before]
  end

  ## Python -> Elixir

  defp ints(n, lo, step), do: for(i <- 0..(n - 1)//1, do: lo + i * step)

  # {function, args, the Elixir value, the form :auto must choose}
  defp result_cases do
    [
      {:ints, [300, -150, 1], ints(300, -150, 1), :packed},
      {:ints, [300, 0, 1_000_000_007], ints(300, 0, 1_000_000_007), :packed},
      {:huge_ints, [300], Enum.map(0..299, &(@u64_max - &1)), :packed},
      {:floats, [400], Enum.map(0..399, &(&1 / 7)), :packed},
      {:ints, [255, 0, 1], ints(255, 0, 1), :etf},
      {:ints, [1000, 0, 0], List.duplicate(0, 1000), :packed},
      {:rows, [683, "string"], rows(683, @bin_key), :records},
      {:rows, [683, "atom"], rows(683, @atom_key), :records},
      {:rows, [683, "binary"], rows(683, @bin_key), :records},
      {:rows, [42, "string"], rows(42, @bin_key), :etf},
      {:columns, [700, "atom"], columns(700, @atom_key), :records},
      {:columns, [10, "string"], columns(10, @bin_key), :etf}
    ]
  end

  test "results: Elixir gets what plain ETF gives, from every form, inline and in slices" do
    for pool <- [@inl, @reg], {fun, args, expected, form} <- result_cases() do
      Bridge.reset_format_stats()
      assert {:ok, etf} = call(pool, fun, args, :etf)
      assert etf === expected, "#{fun}#{inspect(args)} as ETF"

      refute Enum.any?(
               forms(:from_python),
               &(&1 in [:packed, :packed_slice, :records, :records_slice])
             )

      assert {:ok, auto} = call(pool, fun, args, :auto)
      assert auto === expected, "#{fun}#{inspect(args)} under :auto on #{inspect(pool)}"

      case form do
        :etf ->
          refute Enum.any?(
                   forms(:from_python),
                   &(&1 in [:packed, :packed_slice, :records, :records_slice])
                 )

        form ->
          assert stat(:from_python, region(pool, form), :received) == 1,
                 "#{fun}#{inspect(args)} on #{inspect(pool)}: " <> inspect(Bridge.format_stats())
      end
    end
  end

  test "results: forced formats pack small results too" do
    for pool <- [@inl, @reg] do
      # 200 elements (below the :auto minimum), 800 bytes as <i4
      expected = ints(200, 0, 100_000)
      assert {:ok, ^expected} = call(pool, :ints, [200, 0, 100_000], :auto)
      assert stat(:from_python, region(pool, :packed), :received) == 0
      assert {:ok, ^expected} = call(pool, :ints, [200, 0, 100_000], :packed)
      assert stat(:from_python, region(pool, :packed), :received) == 1

      expected = rows(3, @bin_key)
      assert {:ok, ^expected} = call(pool, :rows, [3, "string"], :arrow)
      assert stat(:from_python, region(pool, :records), :received) == 1

      expected = columns(2, @atom_key)
      assert {:ok, ^expected} = call(pool, :columns, [2, "atom"], :arrow)
      assert stat(:from_python, region(pool, :records), :received) == 2

      # a list of integers and floats is not a number list: ETF even when forced
      assert {:ok, [0.5, 1, 2.5]} = call(pool, :mixed, [3], :packed)
      Bridge.reset_format_stats()
    end
  end

  test "results: records Elixir cannot rebuild are a :bad_call error and the worker is kept" do
    for pool <- [@inl, @reg] do
      [before] = worker_os_pids(pool)

      # atom keys this VM does not have, from the records form and from ETF
      for format <- [:arrow, :etf] do
        assert {:error, %Error{kind: :bad_call, reason: :unknown_atom} = e} =
                 call(pool, :unknown_atom_rows, [5], format)

        assert e.message =~ "bbt_no_such_atom_in_this_vm"
      end

      # a list of maps that is not a record list, forced: Python refuses it
      assert {:error, %Error{kind: :bad_call, reason: :format_unsuitable}} =
               call(pool, :nested_rows, [3], :arrow)

      assert {:ok, [%{"a" => [0]}]} = call(pool, :nested_rows, [1], :auto)
      assert {:ok, [1, 2]} = call(pool, :ints, [2, 1, 1])
      assert worker_os_pids(pool) == [before]
    end
  end

  test "round trip: a result echoed back unchanged, every size and form" do
    for pool <- [@inl, @reg], format <- [:auto, :etf, :packed, :arrow] do
      value = %{
        "ints" => Enum.to_list(1..1000),
        "floats" => Enum.map(1..300, &(&1 * 0.5)),
        "rows" => rows(700, @atom_key),
        "small" => [1, 2],
        # not a column map (one value is not a list)
        "n" => 1
      }

      assert {:ok, ^value} = call(pool, :echo, [value], format)
    end
  end

  # Every call, at Logger level :debug (a new application's): what it logs.
  defp debug_log(fun) do
    level = Logger.level()
    Logger.configure(level: :debug)

    try do
      capture_log([level: :debug], fun)
    after
      Logger.configure(level: level)
    end
  end

  test "decisions are counted, and logged at debug level only when asked" do
    quiet =
      debug_log(fn ->
        assert {:ok, _} = call(@reg, :echo, [Enum.to_list(1..1000)])
        assert {:ok, _} = call(@reg, :echo, [{"small", [1, 2]}])
      end)

    refute quiet =~ "beambridge format"
    assert stat(:from_python, :packed_slice, :received) == 1

    Application.put_env(:beambridge, :log_formats, true)

    log =
      try do
        debug_log(fn -> assert {:ok, _} = call(@reg, :echo, [Enum.to_list(1..1000)]) end)
      after
        Application.delete_env(:beambridge, :log_formats)
      end

    assert log =~ "to_python a number list of 1000 elements -> packed_slice (auto), 2000 bytes"
    assert log =~ "from_python a result -> packed_slice (received), 2000 bytes"
    assert stat(:from_python, :packed_slice, :received) == 2
  end
end
