defmodule Bridge.FuzzTest do
  # Seeded property tests: random and mutated headers through Bridge.Header.parse
  # (checked against an independent statement of SPEC §4), and random,
  # out-of-range and wrong-type arguments through every NIF and every public
  # Bridge.Region / Bridge.Header function. The VM must survive and every
  # failure must be a typed error. Set BB_FUZZ_SEED to replay a run.
  use ExUnit.Case, async: true

  import Bitwise
  alias Bridge.{ControlBlock, Error, Header, NIF, Region}
  alias Bridge.Test.Shm

  @moduletag timeout: 300_000

  @header_runs 10_000
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

  # SPEC §4 restated as a list: the first entry whose condition holds is the error.
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
        {vmaj != 1, :unsupported_version},
        {hs != 128, :bad_header_size},
        {format > 4, :unknown_format},
        {codec > 2, :unknown_codec},
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
    codec = Enum.random([:none, :none, :lz4_frame, :zstd])

    Header.encode_frame!(payload,
      metadata: :crypto.strong_rand_bytes(:rand.uniform(300) - 1),
      format: :rand.uniform(5) - 1,
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

  test "random and mutated headers: parse agrees with SPEC §4, decode never crashes", %{
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

  defp fuzz_name, do: "/bbtfuzz-#{System.pid()}-#{Shm.rand_hex()}"

  defp ints(size) do
    [
      -1,
      0,
      1,
      3,
      4,
      8,
      32,
      36,
      40,
      63,
      64,
      191,
      192,
      size - 8,
      size - 4,
      size - 1,
      size,
      size + 1,
      65_537,
      100_000,
      (1 <<< 32) - 1,
      1 <<< 32,
      1 <<< 48,
      (1 <<< 48) + 1,
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
      ints: ints(size) ++ Enum.map(1..10, fn _ -> :rand.uniform(div(size, 8)) * 4 end),
      refs: refs,
      names: [
        fuzz_name(),
        "",
        "/",
        "/..",
        "noslash",
        "/a/b",
        "/a\0b",
        "/" <> String.duplicate("n", 300),
        ~c"/charlist"
      ],
      binaries: ["", "x", :crypto.strong_rand_bytes(100), :binary.copy("b", 70_000)],
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
  # time and anything at all otherwise.
  @nif_funs [
    create: [:name, :int],
    attach: [:name],
    unlink: [:name],
    region_unlink: [:region],
    close: [:region],
    closed?: [:region],
    owner?: [:region],
    size: [:region],
    name: [:region],
    address: [:region],
    binary_address: [:binary],
    read_copy: [:region, :int, :int],
    write: [:region, :int, :binary],
    write_hashed: [:region, :int, :binary],
    xxh3_64: [:binary],
    xxh3_64_region: [:region, :int, :int],
    zstd_decompress: [:binary, :int],
    load_u32: [:region, :int],
    load_u64: [:region, :int],
    store_u32: [:region, :int, :int],
    store_u64: [:region, :int, :int],
    cas_u32: [:region, :int, :int, :int],
    cas_u64: [:region, :int, :int, :int],
    fetch_add_u32: [:region, :int, :int],
    fetch_add_u64: [:region, :int, :int],
    lease_acquire: [:region, :int, :int, :int],
    lease_binary: [:lease, :int, :int],
    lease_release: [:lease]
  ]

  defp typed(kind, pool) do
    if :rand.uniform(10) == 1 do
      term(pool)
    else
      case kind do
        :name -> Enum.random(pool.names)
        :int -> Enum.random(pool.ints)
        :binary -> Enum.random(pool.binaries)
        :region -> Enum.random(pool.regions)
        :lease -> Enum.random(pool.leases).()
      end
    end
  end

  test "random arguments through every NIF function return :ok, {:ok, _} or {:error, atom}",
       %{seed: seed} do
    size = 256 * 1024
    region = Region.create!(size, prefix: "bbtfuzz")
    on_exit(fn -> Region.close(region) end)
    :ok = NIF.store_u32(region.ref, 32, 2)
    {:ok, peer} = Region.attach(region.name)
    closed = Region.create!(4096, prefix: "bbtfuzz")
    :ok = Region.close(closed)
    # Leases come from a region the fuzzer does not otherwise touch.
    lease_region = Region.create!(size, prefix: "bbtfuzz")
    on_exit(fn -> Region.close(lease_region) end)
    :ok = NIF.store_u32(lease_region.ref, 32, 2)
    {:ok, lease} = NIF.lease_acquire(lease_region.ref, 36, 32, 2)
    {:ok, spent} = NIF.lease_acquire(lease_region.ref, 36, 32, 2)
    :ok = NIF.lease_release(spent)
    refs = [region.ref, region.ref, peer.ref, closed.ref, lease, spent]

    pool =
      Map.merge(pool(size, refs), %{
        regions: [region.ref, region.ref, region.ref, peer.ref, closed.ref, lease],
        leases: [
          fn -> lease end,
          fn -> spent end,
          fn -> region.ref end,
          fn ->
            {:ok, fresh} = NIF.lease_acquire(lease_region.ref, 36, 32, 2)
            fresh
          end
        ]
      })

    outcomes =
      for i <- 1..@nif_runs do
        {fun, kinds} = Enum.random(@nif_funs)
        args = for kind <- kinds, do: typed(kind, pool)
        args = safe_args(fun, args, region.ref)
        result = apply(NIF, fun, args)
        context = "seed #{seed} run #{i}: NIF.#{fun}(#{Enum.map_join(args, ", ", &short/1)})"

        case result do
          :ok ->
            :ok

          {:ok, value} ->
            cleanup_created(fun, value)
            {:ok, fun}

          {:error, reason} when is_atom(reason) ->
            reason

          other ->
            flunk("#{context} returned #{inspect(other)}")
        end
      end

    # Both the success and the refusal paths were exercised.
    outcomes = Enum.frequencies(outcomes)
    assert Enum.count(outcomes, &match?({{:ok, _}, _}, &1)) >= 15, inspect(outcomes)

    for reason <- [:badarg, :out_of_bounds, :misaligned, :closed, :bad_name, :state_mismatch] do
      assert Map.has_key?(outcomes, reason), "never saw #{reason}: #{inspect(outcomes)}"
    end

    # The VM and the NIF still work after all that.
    fresh = Region.create_for_frame!(11, prefix: "bbtfuzz")
    assert {:ok, _} = Region.write_frame(fresh, "still alive")
    assert Region.read_frame!(fresh).payload == "still alive"
    :ok = Region.close(fresh)
    _ = Region.close(peer)
  end

  # create and unlink only ever see names no one else uses, and create never
  # reserves more than 1 MiB for real (larger sizes stay, when they exceed any
  # /dev/shm: 2^48 and up).
  defp safe_args(:close, [main], main) do
    # Closing the main region would leave nothing to fuzz: close a throwaway one.
    {:ok, ref} = NIF.create(fuzz_name(), 4096)
    :ok = NIF.region_unlink(ref)
    [ref]
  end

  defp safe_args(fun, args, _main), do: safe_args(fun, args)

  defp safe_args(:create, [name, size]) do
    name =
      if is_binary(name) and valid_shm?(name) and not String.starts_with?(name, "/bbtfuzz-"),
        do: fuzz_name(),
        else: name

    [name, safe_size(size)]
  end

  defp safe_args(:unlink, [name]) when is_binary(name),
    do: [if(valid_shm?(name), do: fuzz_name(), else: name)]

  defp safe_args(_fun, args), do: args

  defp safe_size(size) when is_integer(size) and size > 1 <<< 20 and size < 1 <<< 48, do: 1 <<< 20
  defp safe_size(size), do: size

  # Whether shm_open would accept the name (the NIF's own rule).
  defp valid_shm?(name) do
    match?("/" <> _, name) and byte_size(name) in 2..255 and name not in ["/.", "/.."] and
      not String.contains?(binary_part(name, 1, byte_size(name) - 1), ["/", <<0>>])
  end

  defp cleanup_created(:create, ref) do
    :ok = NIF.region_unlink(ref)
    :ok = NIF.close(ref)
  end

  defp cleanup_created(_, _), do: :ok

  defp short(b) when is_binary(b) and byte_size(b) > 20, do: "<<#{byte_size(b)} bytes>>"
  defp short(t), do: inspect(t, limit: 5)

  # ---------------------------------------------------------------- public API

  test "random arguments through the public API return typed results", %{seed: seed} do
    owned = Region.create!(64 * 1024, prefix: "bbtfuzz")
    on_exit(fn -> Region.close(owned) end)
    {:ok, peer} = Region.attach(owned.name)
    closed = Region.create!(4096, prefix: "bbtfuzz")
    :ok = Region.close(closed)

    regions = [
      owned,
      owned,
      peer,
      closed,
      %{owned | owner?: false},
      %{peer | owner?: true},
      %{owned | size: 1 <<< 70},
      %{owned | size: -5},
      %{owned | ref: make_ref()},
      %{owned | ref: :nope},
      %{ref: owned.ref},
      owned.ref
    ]

    pool = pool(64 * 1024, regions)

    opts = [
      [],
      [prefix: "bbtfuzz"],
      [prefix: "BAD"],
      [prefix: 7],
      [verify: false],
      [verify: :maybe],
      [metadata: "meta"],
      [metadata: 5],
      [metadata_length: -1],
      [metadata_length: 1 <<< 40],
      [format: 9],
      [format: :tensor, codec: :zstd, decoded_length: 10],
      [codec: :bogus],
      [flags: 2],
      [flags: -1],
      [schema_id: 1 <<< 64],
      [payload_offset: 65],
      [max_decoded_length: :inf],
      [checksum: 1],
      [:x],
      [{:prefix, "bbtfuzz"} | :improper],
      "opts",
      %{}
    ]

    calls = [
      fn -> Region.create(safe_size(Enum.random(pool.ints ++ [8192])), api_opts(opts)) end,
      fn ->
        Region.create_for_frame(safe_size(Enum.random(pool.ints)) - 4096, api_opts(opts))
      end,
      fn -> Region.attach(Enum.random(pool.names ++ [owned.name, closed.name, :x])) end,
      fn -> Region.write_frame(Enum.random(regions), term(pool), Enum.random(opts)) end,
      fn -> Region.read_frame(Enum.random(regions), Enum.random(opts)) end,
      fn -> Region.close(Enum.random([peer, closed, %{owned | ref: make_ref()}, :x, %{}])) end,
      fn -> Region.unlink(Enum.random([peer, closed, %{owned | ref: make_ref()}, :x])) end,
      fn -> Region.reap_stale(Enum.random([[prefix: "bbtfuzzreap"], [prefix: "X"], :x, [1]])) end,
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

        # Let payload binaries of earlier reads go, so writes are not always :leased.
        if rem(i, 50) == 0, do: :erlang.garbage_collect()

        case result do
          :ok ->
            :ok

          {:ok, %Region{} = r} ->
            Region.close!(r)
            :ok

          {:ok, _} ->
            :ok

          {:error, %Error{kind: kind, reason: r}}
          when kind in [:bad_frame, :region, :lease] and is_atom(r) ->
            r

          other ->
            flunk("seed #{seed} run #{i}: returned #{inspect(other)}")
        end
      end

    # Successes and many distinct refusals were exercised.
    outcomes = Enum.frequencies(outcomes)
    assert Map.get(outcomes, :ok, 0) > 50, inspect(outcomes)
    assert map_size(outcomes) >= 10, inspect(outcomes)
    _ = Region.close(peer)
  end

  # create/create_for_frame only ever use the test prefix or an invalid one.
  defp api_opts(opts) do
    o = Enum.random(opts)
    if is_list(o) and Keyword.keyword?(o), do: Keyword.put_new(o, :prefix, "bbtfuzz"), else: o
  end

  test "a forged control block does not confuse the reaper" do
    dead = Shm.dead_pid()
    name = Shm.forged_name("bbtfuzzcb", dead)
    {:ok, ref} = NIF.create(name, 4096)
    :ok = NIF.write(ref, 0, :crypto.strong_rand_bytes(64))
    :ok = NIF.close(ref)
    assert {:ok, [^name]} = Region.reap_stale(prefix: "bbtfuzzcb")
    assert ControlBlock.validate(<<>>, 0) |> elem(0) == :error
  end
end
