defmodule Bridge.FuzzTest do
  # Seeded property tests: random and mutated headers through Bridge.Header.parse
  # (checked against an independent statement of SPEC §6), and random,
  # out-of-range and wrong-type arguments through every NIF and every public
  # Bridge.Arena / Bridge.Peer / Bridge.Header function. The VM must survive and
  # every failure must be a typed error. Set BB_FUZZ_SEED to replay a run.
  use ExUnit.Case, async: true

  import Bitwise
  alias Bridge.{Arena, Error, Header, LeaseTable, NIF, Peer}
  alias Bridge.Test.Shm

  @moduletag timeout: 300_000

  @header_runs 10_000
  # the highest format code of protocol/registry.json
  @max_format Bridge.Registry.formats() |> Enum.map(&elem(&1, 1)) |> Enum.max()
  @nif_runs 20_000
  @api_runs 5_000

  setup_all do
    %{seed: Bridge.Test.Seed.run_seed(__MODULE__)}
  end

  setup %{seed: seed} = context do
    Bridge.Test.Seed.seed_test(seed, context.test, 42)
    :ok
  end

  # ---------------------------------------------------------------- headers

  @reason_field %{
    truncated_header: :header,
    bad_magic: :magic,
    unsupported_version: :version_major,
    bad_header_size: :header_size,
    unknown_format: :format,
    unknown_codec: :codec,
    unknown_flags: :flags,
    metadata_too_large: :metadata_length,
    metadata_out_of_bounds: :metadata_length,
    misaligned_payload: :payload_offset,
    payload_overlaps_metadata: :payload_offset,
    length_overflow: :payload_length,
    payload_out_of_bounds: :payload_length,
    bad_decoded_length: :decoded_length,
    decoded_too_large: :decoded_length,
    header_checksum_mismatch: :header_checksum,
    checksum_mismatch: :payload_checksum
  }

  # SPEC §6 restated as a list: the first entry whose condition holds is the error.
  defp expected(bin) do
    fs = byte_size(bin)

    if fs < 128 do
      :truncated_header
    else
      <<magic::binary-4, vmaj::little-16, _::16, hs::little-16, format, codec, flags::little-32,
        _::binary-20, ml::little-32, po::little-64, pl::little-64, dl::little-64, _::binary-56,
        hc::little-64, _::binary>> = bin

      {:ok, computed} =
        if 128 + ml <= fs,
          do: NIF.xxh3_64(binary_part(bin, 0, 120) <> binary_part(bin, 128, ml)),
          else: {:ok, nil}

      [
        {magic != "BBFH", :bad_magic},
        {vmaj != 2, :unsupported_version},
        {hs != 128, :bad_header_size},
        {format > @max_format, :unknown_format},
        {codec > 3, :unknown_codec},
        {(flags &&& 0xFFFE) != 0, :unknown_flags},
        {ml > 1_048_576, :metadata_too_large},
        {128 + ml > fs, :metadata_out_of_bounds},
        {rem(po, 64) != 0, :misaligned_payload},
        {po < 128 + ml, :payload_overlaps_metadata},
        {po + pl >= 1 <<< 64, :length_overflow},
        {po + pl > fs, :payload_out_of_bounds},
        {codec == 0 and dl != pl, :bad_decoded_length},
        {codec != 0 and dl > 1 <<< 32, :decoded_too_large},
        {hc != computed, :header_checksum_mismatch}
      ]
      |> Enum.find_value(:ok, fn {failed, reason} -> if failed, do: reason end)
    end
  end

  defp valid_frame do
    payload = :crypto.strong_rand_bytes(:rand.uniform(600) - 1)
    codec = Enum.random([:none, :none, :lz4_frame, :zstd, :gzip])

    Header.encode_frame!(payload,
      metadata: :crypto.strong_rand_bytes(:rand.uniform(300) - 1),
      format: :rand.uniform(@max_format + 1) - 1,
      codec: codec,
      decoded_length: if(codec == :none, do: byte_size(payload), else: :rand.uniform(1 <<< 33)),
      generation: :rand.uniform(1 <<< 64) - 1,
      checksum: :rand.uniform(2) == 1,
      flags: Enum.random([0, 1 <<< 16, 1 <<< 31])
    )
  end

  @fields [
    {4, 16},
    {6, 16},
    {8, 16},
    {10, 8},
    {11, 8},
    {12, 32},
    {16, 64},
    {36, 32},
    {40, 64},
    {48, 64},
    {56, 64},
    {64, 64},
    {120, 64}
  ]

  defp interesting(bits, frame_size) do
    Enum.random([
      0,
      1,
      2,
      3,
      5,
      63,
      64,
      127,
      128,
      192,
      256,
      1_048_576,
      1_048_577,
      frame_size,
      frame_size - 1,
      frame_size + 1,
      1 <<< 32,
      (1 <<< bits) - 1,
      (1 <<< bits) - 64,
      :rand.uniform(1 <<< bits) - 1
    ])
    |> max(0)
    |> band((1 <<< bits) - 1)
  end

  defp mutate(frame) do
    case :rand.uniform(6) do
      1 ->
        # flip random bytes anywhere
        Enum.reduce(1..:rand.uniform(4), frame, fn _, acc ->
          pos = :rand.uniform(byte_size(acc)) - 1
          <<a::binary-size(pos), b, c::binary>> = acc
          <<a::binary, bxor(b, :rand.uniform(255))::8, c::binary>>
        end)

      n when n in 2..4 ->
        # set a field to an interesting value, re-checksummed most of the time
        {off, bits} = Enum.random(@fields)
        v = interesting(bits, byte_size(frame))
        <<a::binary-size(off), _::size(bits), c::binary>> = frame
        mutated = <<a::binary, v::little-size(bits), c::binary>>
        if :rand.uniform(4) > 1 and off != 120, do: rechecksum(mutated), else: mutated

      5 ->
        # truncate or extend
        if :rand.uniform(2) == 1,
          do: binary_part(frame, 0, :rand.uniform(byte_size(frame)) - 1),
          else: frame <> :crypto.strong_rand_bytes(:rand.uniform(200))

      6 ->
        frame
    end
  end

  # Recompute header_checksum over header[0:120] ++ metadata when the metadata is there.
  defp rechecksum(<<first::binary-120, _::64, rest::binary>> = bin) do
    <<_::binary-36, ml::little-32, _::binary>> = first

    if ml <= byte_size(rest) do
      {:ok, c} = NIF.xxh3_64(first <> binary_part(rest, 0, ml))
      <<first::binary, c::little-64, rest::binary>>
    else
      bin
    end
  end

  defp rechecksum(bin), do: bin

  defp random_header_input do
    case :rand.uniform(4) do
      1 -> :crypto.strong_rand_bytes(:rand.uniform(400) - 1)
      2 -> "BBFH" <> :crypto.strong_rand_bytes(:rand.uniform(300))
      _ -> mutate(valid_frame())
    end
  end

  test "random and mutated headers: parse agrees with SPEC §6, decode never crashes", %{
    seed: seed
  } do
    counts =
      Enum.reduce(1..@header_runs, %{}, fn i, counts ->
        bin = random_header_input()
        want = expected(bin)
        got = Header.parse(bin, byte_size(bin))

        context = "seed #{seed} run #{i} input #{Base.encode16(bin)}"

        case got do
          {:ok, %Header{} = h} ->
            assert want == :ok, context
            assert h.payload_offset + h.payload_length <= byte_size(bin), context

            case Header.decode_frame(bin) do
              {:ok, f} -> assert byte_size(f.payload) == h.payload_length, context
              {:error, %Error{reason: :checksum_mismatch}} -> :ok
            end

          {:error, %Error{kind: :bad_frame, reason: reason, field: field} = e} ->
            assert reason == want, context
            assert Map.fetch!(@reason_field, reason) == field, context
            assert is_binary(Exception.message(e))
            assert {:error, %Error{reason: ^reason}} = Header.decode_frame(bin)
        end

        Map.update(counts, want, 1, &(&1 + 1))
      end)

    # The generator reaches most checks, so the comparison means something.
    assert map_size(counts) >= 12, inspect(counts)
  end

  # ---------------------------------------------------------------- NIF

  @mib 1024 * 1024

  defp fuzz_name, do: "/bbtfuzz-#{System.pid()}-#{Shm.rand_hex()}"

  defp ints(size) do
    [
      -1,
      0,
      1,
      3,
      4,
      8,
      63,
      64,
      65,
      127,
      128,
      191,
      192,
      4095,
      4096,
      size - 64,
      size - 1,
      size,
      size + 1,
      65_537,
      100_000,
      (1 <<< 32) - 1,
      1 <<< 32,
      1 <<< 40,
      (1 <<< 40) + 1,
      1 <<< 63,
      (1 <<< 64) - 1,
      1 <<< 64,
      -(1 <<< 64),
      1 <<< 200,
      :rand.uniform(size)
    ]
  end

  defp term(pool) do
    case :rand.uniform(10) do
      n when n <= 4 -> Enum.random(pool.ints)
      5 -> Enum.random(pool.refs)
      6 -> Enum.random(pool.names)
      7 -> Enum.random(pool.binaries)
      _ -> Enum.random(pool.junk)
    end
  end

  defp pool(size, refs) do
    %{
      ints: ints(size) ++ Enum.map(1..10, fn _ -> :rand.uniform(div(size, 64)) * 64 end),
      refs: refs,
      names: [fuzz_name(), "", "/", "/..", "noslash", "/a/b", "/a\0b", ~c"/charlist"],
      binaries: ["", "x", :crypto.strong_rand_bytes(128), :binary.copy("b", 70_000)],
      junk: [
        :atom,
        nil,
        true,
        1.5,
        -0.0,
        [],
        [1, 2],
        [1 | 2],
        {},
        {1, 2},
        %{},
        self(),
        make_ref(),
        fn -> :ok end,
        <<1::3>>
      ]
    }
  end

  # Argument kinds per NIF function; each argument is of its kind 90% of the
  # time and anything at all otherwise. `kill` is left out (it signals processes),
  # and arena sets are only ever the test's own (small limits), see safe_args/2.
  @nif_funs [
    unlink: [:name],
    euid: [],
    binary_address: [:binary],
    xxh3_64: [:binary],
    zstd_decompress: [:binary, :int],
    arena_set_new: [:int, :int],
    arena_set_close: [:set],
    arena_set_stats: [:set],
    arena_set_trim: [:set, :int, :int],
    arena_grow: [:set, :int, :int],
    arena_info: [:set, :int],
    slice_alloc: [:set, :int],
    slice_info: [:slice],
    slice_write_frame: [:slice, :binary, :binary, :parts, :bool],
    slice_read: [:slice, :int, :int],
    slice_write: [:slice, :int, :binary],
    slice_release: [:slice],
    slice_lend: [:slice],
    slice_return: [:slice],
    slice_hold: [:slice],
    slice_unhold: [:slice],
    slice_binary: [:slice, :int, :int],
    lease_table_new: [:int],
    lease_table_info: [:table],
    lease_table_word: [:table, :int],
    peer_open: [:pid, :int, :kind, :int, :size, :int],
    peer_info: [:peer],
    peer_close: [:peer],
    peer_lease: [:peer, :int, :int, :table, :ticket],
    peer_lease_read: [:lease, :int, :int],
    peer_lease_binary: [:lease, :int, :int],
    peer_lease_release: [:lease],
    fd_count: []
  ]

  defp typed(kind, pool) do
    if :rand.uniform(10) == 1 do
      term(pool)
    else
      case kind do
        :name -> Enum.random(pool.names)
        :int -> Enum.random(pool.ints)
        :binary -> Enum.random(pool.binaries ++ pool.headers)
        :parts -> Enum.random([[], ["x"], pool.binaries, [1], "x"])
        :bool -> Enum.random([true, false])
        :set -> Enum.random(pool.sets)
        :slice -> Enum.random(pool.slices).()
        :table -> Enum.random(pool.tables)
        :peer -> Enum.random(pool.peers).()
        :lease -> Enum.random(pool.leases).()
        :ticket -> Enum.random([{0, 1}, {3, 1 <<< 64}, {-1, 0}, {1 <<< 32, 1}, nil, {1}])
        :pid -> Enum.random([String.to_integer(System.pid()), 1, 2, Shm.dead_pid(), -1])
        :kind -> Enum.random([0, 1, 2, 3, -1])
        :size -> Enum.random([4096, 8192, 4095, 16 * @mib, 0, 1 <<< 41])
      end
    end
  end

  test "random arguments through every NIF function return :ok, {:ok, _} or {:error, reason}",
       %{seed: seed} do
    {:ok, arena} = Arena.new(limit: 64 * @mib, min_arena: @mib)
    on_exit(fn -> Arena.close(arena) end)
    {:ok, s} = Arena.put(arena, :binary.copy("p", 1000), [])
    # the slice the peer reads stays out of the fuzzer's reach (it could release it)
    {:ok, a} = Arena.announcement(arena, s.arena_id)
    {:ok, peer} = Peer.open(a)
    {:ok, closed_peer} = Peer.open(a)
    :ok = Peer.close(closed_peer)
    {:ok, table} = LeaseTable.new(4)
    {:ok, released} = Arena.alloc(arena, 200)
    :ok = Arena.release(released)
    {:ok, h} = Header.build(:binary.copy("x", 128), checksum: false)
    {:ok, header} = Header.pack(h)

    fresh_slice = fn ->
      with {:ok, x} <- Arena.alloc(arena, Enum.random([128, 200, 5000])), do: x.ref
    end

    fresh_lease = fn ->
      with {:ok, l} <- NIF.peer_lease(peer, s.offset, s.length, table, {:rand.uniform(4) - 1, 1}),
           do: l
    end

    pool =
      Map.merge(pool(4096, [arena.ref, peer, table]), %{
        headers: [header, :binary.copy(<<0>>, 128)],
        sets: [arena.ref, arena.ref, peer, table],
        slices: [fresh_slice, fresh_slice, fresh_slice, fn -> released.ref end, fn -> peer end],
        tables: [table, table, arena.ref],
        peers: [fn -> peer end, fn -> closed_peer end, fn -> table end],
        leases: [fresh_lease, fn -> peer end]
      })

    outcomes =
      for i <- 1..@nif_runs do
        {fun, kinds} = Enum.random(@nif_funs)
        args = safe_args(fun, for(kind <- kinds, do: typed(kind, pool)), arena.ref)
        result = apply(NIF, fun, args)
        context = "seed #{seed} run #{i}: NIF.#{fun}(#{Enum.map_join(args, ", ", &short/1)})"

        case result do
          :ok -> :ok
          {:ok, value} -> cleanup_created(fun, value) && {:ok, fun}
          {:error, reason} when is_atom(reason) -> reason
          {:error, {reason, _}} when is_atom(reason) -> reason
          other -> flunk("#{context} returned #{inspect(other)}")
        end
      end

    # Both the success and the refusal paths were exercised.
    outcomes = Enum.frequencies(outcomes)
    assert Enum.count(outcomes, &match?({{:ok, _}, _}, &1)) >= 15, inspect(outcomes)

    for reason <- [
          :badarg,
          :out_of_bounds,
          :released,
          :slice_out_of_bounds,
          :bad_name,
          :peer_open_failed,
          :bad_frame
        ] do
      assert Map.has_key?(outcomes, reason), "never saw #{reason}: #{inspect(outcomes)}"
    end

    # The VM and the NIF still work after all that.
    {:ok, arena2} = Arena.new(limit: 4 * @mib, min_arena: @mib)
    {:ok, s2} = Arena.put(arena2, "still alive", [])
    {:ok, a2} = Arena.announcement(arena2, s2.arena_id)
    {:ok, p2} = Peer.open(a2)
    {:ok, l2} = Peer.lease(p2, s2.offset, s2.length, nil, nil)

    assert {:ok, %{payload: "still alive"}} =
             Peer.read_frame(l2, s2.length, s2.generation, copy: true)

    Arena.close(arena2)
  end

  # Arena sets the fuzzer makes are small, and never grow past 4 MiB for real; unlink
  # only ever sees a name no one uses.
  defp safe_args(:arena_set_close, [main], main) do
    {:ok, throwaway} = NIF.arena_set_new(4 * @mib, @mib)
    [throwaway]
  end

  defp safe_args(fun, args, _main), do: safe_args(fun, args)

  defp safe_args(:arena_set_new, [limit, min]) when is_integer(limit) and limit > 4 * @mib,
    do: [4 * @mib, min]

  defp safe_args(:arena_grow, [set, len, max]) when is_integer(max) and max > 8 * @mib,
    do: [set, len, 8 * @mib]

  defp safe_args(:unlink, [name]) when is_binary(name),
    do: [if(String.starts_with?(name, "/") and byte_size(name) > 3, do: fuzz_name(), else: name)]

  defp safe_args(_fun, args), do: args

  defp cleanup_created(:arena_set_new, set), do: NIF.arena_set_close(set)
  defp cleanup_created(_, _), do: :ok

  defp short(b) when is_binary(b) and byte_size(b) > 20, do: "<<#{byte_size(b)} bytes>>"
  defp short(t), do: inspect(t, limit: 5)

  # ---------------------------------------------------------------- public API

  test "random arguments through the public API return typed results", %{seed: seed} do
    {:ok, arena} = Arena.new(limit: 8 * @mib, min_arena: @mib)
    on_exit(fn -> Arena.close(arena) end)
    {:ok, s} = Arena.put(arena, "api", [])
    {:ok, a} = Arena.announcement(arena, s.arena_id)
    {:ok, peer} = Peer.open(a)
    {:ok, table} = LeaseTable.new(8)
    pool = pool(8 * @mib, [arena.ref, s.ref, peer])

    opts = [
      [],
      [metadata: "meta"],
      [metadata: 5],
      [format: 9],
      [format: :tensor, codec: :zstd, decoded_length: 10],
      [codec: :bogus],
      [flags: 2],
      [flags: -1],
      [schema_id: 1 <<< 64],
      [payload_offset: 65],
      [max_decoded_length: :inf],
      [checksum: 1],
      [checksum: true],
      [verify: :maybe],
      [copy: true],
      [:x],
      [{:format, :raw} | :improper],
      "opts",
      %{}
    ]

    announcements = [
      a,
      put_elem(a, 6, 0),
      put_elem(a, 3, 99_999),
      put_elem(a, 1, :sealed),
      {:object, :nope},
      :x,
      put_elem(a, 5, 4097)
    ]

    slices = [s, %{s | offset: 0}, %{s | length: 1 <<< 50}, %{s | ref: make_ref()}]

    calls = [
      fn ->
        Arena.new(
          Enum.random([
            [limit: Enum.random(pool.ints) |> min(4 * @mib)],
            [limit: :x],
            [min_arena: 3],
            [checksum: 2]
          ])
        )
      end,
      fn -> Arena.put(arena, Enum.random(pool.binaries), Enum.random(opts)) end,
      fn -> Arena.alloc(arena, Enum.random(pool.ints) |> max(0) |> min(16 * @mib)) end,
      fn -> Arena.read(Enum.random(slices), Enum.random(pool.ints), Enum.random(pool.ints)) end,
      fn -> Arena.binary(Enum.random(slices), Enum.random(pool.ints), Enum.random(pool.ints)) end,
      fn -> Peer.open(Enum.random(announcements)) end,
      fn ->
        Peer.lease(
          peer,
          Enum.random(pool.ints),
          Enum.random(pool.ints),
          Enum.random([table, nil]),
          Enum.random([{0, s.generation}, nil, {9, 1}])
        )
      end,
      fn ->
        with {:ok, l} <- Peer.lease(peer, s.offset, s.length, nil, nil),
             do:
               Peer.read_frame(
                 l,
                 Enum.random([s.length | pool.ints]) |> max(0),
                 Enum.random([s.generation | pool.ints]) |> max(0),
                 Enum.random(opts)
               )
      end,
      fn -> Header.parse(term(pool), term(pool), Enum.random(opts)) end,
      fn -> Header.build(term(pool), Enum.random(opts)) end,
      fn ->
        Header.encode(
          Enum.random([%Header{}, %Header{format: -1}, %Header{magic: "x"}, :x]),
          term(pool)
        )
      end,
      fn -> Header.encode_frame(term(pool), Enum.random(opts)) end,
      fn -> Header.decode_frame(term(pool), Enum.random(opts)) end
    ]

    outcomes =
      for i <- 1..@api_runs do
        call = Enum.random(calls)

        result =
          try do
            call.()
          rescue
            e ->
              flunk(
                "seed #{seed} run #{i}: raised #{Exception.format(:error, e, __STACKTRACE__)}"
              )
          end

        case result do
          :ok -> :ok
          {:ok, %Arena{} = made} -> Arena.close(made) && :ok
          {:ok, %Arena.Slice{} = x} -> Arena.release(x) && :ok
          {:ok, _} -> :ok
          {:error, %Error{reason: r}} when is_atom(r) -> r
          other -> flunk("seed #{seed} run #{i}: returned #{inspect(other)}")
        end
      end

    # Successes and many distinct refusals were exercised.
    outcomes = Enum.frequencies(outcomes)
    assert Map.get(outcomes, :ok, 0) > 50, inspect(outcomes)
    assert map_size(outcomes) >= 10, inspect(outcomes)
  end
end
