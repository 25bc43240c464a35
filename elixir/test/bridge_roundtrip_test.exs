defmodule Bridge.RoundtripTest do
  # Data across the bridge (SPEC §9, §10) with real workers: sizes around the
  # threshold up to 256 MiB, tensors, every row of the type mapping, and
  # invariant 7 (the Python type does not depend on the size).
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  @moduletag timeout: 300_000
  @threshold 65_536
  @mib 1024 * 1024

  setup_all do
    start_supervised!({Bridge, bridge_opts(RT, pool_size: 2, timeout: 60_000)})
    :ok
  end

  defp call(fun, args, opts \\ []),
    do: Bridge.call({:bbt_handlers, fun}, args, [pool: RT] ++ opts)

  describe "identity round trips are bit-exact" do
    for size <- [0, 1, @threshold - 1, @threshold, @threshold + 1, @mib] do
      test "#{size} bytes" do
        data = :crypto.strong_rand_bytes(unquote(size))
        assert {:ok, ^data} = call(:identity, [data])
        assert {:ok, {"bytes", unquote(size)}} = call(:describe, [data])
      end
    end

    @tag :large
    test "64 MiB and 256 MiB travel through slices both ways, zero-copy on the way back" do
      for size <- [64 * @mib, 256 * @mib] do
        data = :binary.copy(:crypto.strong_rand_bytes(@mib), div(size, @mib))
        assert {:ok, result} = call(:identity, [data])
        assert byte_size(result) == size
        assert result == data
        assert_shared_binary(result)
        assert {:ok, {"bytes", ^size}} = call(:describe, [data])
      end
    end
  end

  test "with threshold 1 every payload travels through a slice, in both directions" do
    start_supervised!(
      {Bridge, bridge_opts(RT1, pool_size: 1, threshold: 1)},
      id: :threshold_one
    )

    data = "ab"
    assert {:ok, ^data} = Bridge.call({:bbt_handlers, :identity}, [data], pool: RT1)
    assert {:ok, {"bytes", 2}} = Bridge.call({:bbt_handlers, :describe}, [data], pool: RT1)
    assert {:ok, result} = Bridge.call({:bbt_handlers, :make_bytes}, [2, 7], pool: RT1)
    assert result == <<7, 7>>
    assert_shared_binary(result)

    t = Bridge.Tensor.new!(<<1, 2, 3>>, {:u, 8}, {3})

    assert {:ok, %Bridge.Tensor{data: <<1, 2, 3>>, shape: {3}}} =
             Bridge.call({:bbt_handlers, :identity}, [t], pool: RT1)
  end

  test "results at or above the threshold are zero-copy binaries over a worker slice" do
    {:ok, small} = call(:make_bytes, [@threshold - 1, 1])
    {:ok, big} = call(:make_bytes, [@threshold, 2])
    assert byte_size(small) == @threshold - 1
    assert big == :binary.copy(<<2>>, @threshold)
    refute mapping_of(elem(Bridge.NIF.binary_address(small), 1)) =~ "memfd:"
    assert_shared_binary(big)
    # The mapping is read-only here: the arena belongs to a worker, not to the BEAM.
    {:ok, address} = Bridge.NIF.binary_address(big)
    assert mapping_flags(address) =~ ~r/^r--s/
  end

  describe "tensors" do
    for {dtype, shape} <- [
          {{:f, 32}, {3, 4}},
          {{:f, 64}, {}},
          {{:s, 8}, {5}},
          {{:s, 16}, {2, 2, 2}},
          {{:s, 32}, {0, 3}},
          {{:s, 64}, {7}},
          {{:u, 8}, {256, 300}},
          {{:u, 16}, {1, 1}},
          {{:u, 32}, {10}},
          {{:u, 64}, {0}},
          {{:f, 16}, {4, 5}},
          {{:c, 64}, {2}},
          {{:c, 128}, {3, 1}},
          {{:f, 32}, {128, 1024}}
        ] do
      test "#{inspect(dtype)} #{inspect(shape)}" do
        {_, bits} = dtype = unquote(Macro.escape(dtype))
        shape = unquote(Macro.escape(shape))
        n = shape |> Tuple.to_list() |> Enum.product()
        data = :crypto.strong_rand_bytes(n * div(bits, 8))
        data = if elem(dtype, 0) in [:f, :c], do: finite(data, bits, elem(dtype, 0)), else: data
        tensor = Bridge.Tensor.new!(data, dtype, shape)
        np = Bridge.Tensor.numpy_dtype(dtype)

        assert {:ok, ^tensor} = call(:identity, [tensor])
        assert {:ok, {"ndarray", ^np, shape_list, false}} = call(:describe, [tensor])
        assert shape_list == Tuple.to_list(shape)

        if byte_size(data) >= @threshold do
          {:ok, back} = call(:identity, [tensor])
          assert_shared_binary(back.data)
        end
      end
    end

    test "a tensor made in Python comes back as %Bridge.Tensor{}" do
      {:ok, t} = call(:make_tensor, ["<i4", [2, 3]])

      assert t ==
               Bridge.Tensor.new!(
                 for(i <- 0..5, into: "", do: <<i::little-32>>),
                 {:s, 32},
                 {2, 3}
               )

      {:ok, big} = call(:make_tensor, ["<f8", [100, 100]])
      assert big.shape == {100, 100} and big.dtype == {:f, 64}
      assert_shared_binary(big.data)
    end

    test "an invalid tensor is refused before it is sent" do
      bad = %Bridge.Tensor{dtype: {:f, 32}, shape: {3}, data: <<0::32>>}

      assert {:error, %Bridge.Error{kind: :bad_call, reason: :bad_tensor}} =
               call(:identity, [bad])
    end
  end

  # Random bytes are not all finite floats; NaN is fine in a tensor but makes
  # equality of the struct fail for NaN payload differences — keep them finite.
  defp finite(data, bits, _kind) do
    half = div(bits, 8)
    for <<chunk::binary-size(half) <- data>>, into: "", do: finite_chunk(chunk, half)
  end

  defp finite_chunk(chunk, 2) do
    <<m::little-16>> = chunk
    <<Bitwise.band(m, 0x3BFF)::little-16>>
  end

  defp finite_chunk(chunk, size) do
    # clear the top exponent bit so the value is finite (and not NaN/inf)
    <<low::binary-size(size - 1), high>> = chunk
    <<low::binary, Bitwise.band(high, 0xBF)>>
  end

  describe "type mapping (SPEC §10), Elixir -> Python" do
    test "every row" do
      assert {:ok, ["int", "int", "int", "int"]} = call(:types, [0, -5, 2 ** 70, -(2 ** 300)])
      assert {:ok, ["float", "bool", "bool", "NoneType"]} = call(:types, [1.5, true, false, nil])
      assert {:ok, ["Atom", "bytes", "bytes", "list"]} = call(:types, [:ok, "", "text", [1]])

      assert {:ok, ["tuple", "dict", "memoryview", "ndarray"]} =
               call(:types, [
                 {1, 2},
                 %{a: 1},
                 Bridge.Buffer.new("x"),
                 Bridge.Tensor.new!(<<1>>, {:u, 8}, {1})
               ])

      assert {:ok, true} = call(:is_atom, [:some_atom])
      assert {:ok, false} = call(:is_atom, ["some_atom"])
    end

    test "values survive the round trip" do
      values = [
        0,
        -1,
        255,
        256,
        2 ** 31,
        -(2 ** 31) - 1,
        2 ** 64,
        -(2 ** 1000),
        0.0,
        -2.5,
        1.0e300,
        true,
        false,
        nil,
        :atom,
        "",
        "bytes",
        [],
        [1, 2, 3],
        ~c"charlist",
        [[], [[]]],
        {},
        {1, {2, "x"}},
        %{},
        %{"k" => [1, %{a: {:b}}], 1 => 2.0}
      ]

      for v <- values, do: assert({:ok, ^v} = call(:identity, [v]))
      assert {:ok, ^values} = call(:identity, [values])
    end

    test "a Buffer arrives as a read-only memoryview below and above the threshold" do
      for size <- [0, 10, @threshold - 1, @threshold, @mib] do
        buf = Bridge.Buffer.new(:binary.copy("z", size))
        assert {:ok, {"memoryview", true, ^size}} = call(:describe, [buf])
        assert {:ok, back} = call(:identity, [buf])
        assert back == buf.data
      end
    end

    test "terms that cannot cross are a :bad_call before anything is sent" do
      # a pid crosses, with its node's MAC (SPEC §9), and comes back as itself
      me = self()
      assert {:ok, ^me} = call(:identity, [me])

      for bad <- [
            make_ref(),
            fn -> 1 end,
            <<1::3>>,
            [1 | 2],
            :"$bb_slice",
            {:"$bb_x", 1}
          ] do
        assert {:error, %Bridge.Error{kind: :bad_call, reason: :bad_term}} =
                 call(:identity, [bad])
      end

      assert {:ok, 3} = call(:add, [1, 2])
    end
  end

  describe "type mapping (SPEC §10), Python -> Elixir" do
    test "every row" do
      expect = [
        str: "héllo",
        bytes: <<0, 1>>,
        bytearray: "ab",
        memoryview: "mv",
        none: nil,
        true: true,
        false: false,
        int: 42,
        negative: -7,
        bigint: 2 ** 200,
        negbig: -(2 ** 100),
        float: 1.5,
        list: [1, [2, 3]],
        tuple: {1, "a"},
        dict: %{"k" => 1, :a => [2]},
        atom: :ok,
        empty_list: [],
        empty_tuple: {},
        numpy_int: 5,
        ndarray:
          Bridge.Tensor.new!(
            <<1::little-32, 2::little-32, 3::little-32, 4::little-32>>,
            {:s, 32},
            {2, 2}
          )
      ]

      for {kind, value} <- expect do
        assert {:ok, ^value} = call(:returns, [Atom.to_string(kind)]), "returns(#{kind})"
      end
    end

    test "a value Python cannot send is an error naming its type" do
      assert {:error, %Bridge.Error{} = e} = call(:returns, [:set])
      assert e.message =~ "set"
      assert {:error, %Bridge.Error{}} = call(:returns, [:nan])
      assert {:ok, 3} = call(:add, [1, 2])
    end
  end

  describe "invariant 7: the handler's type does not depend on the size" do
    test "binaries, buffers and tensors below, at and above the threshold" do
      for size <- [1, @threshold - 1, @threshold, @threshold + 1, 4 * @threshold] do
        bin = :binary.copy("a", size)
        assert {:ok, "bytes"} = call(:type_name, [bin])
        assert {:ok, "memoryview"} = call(:type_name, [Bridge.Buffer.new(bin)])
        assert {:ok, "ndarray"} = call(:type_name, [Bridge.Tensor.new!(bin, {:u, 8}, {size})])

        assert {:ok, {"ndarray", "|u1", [^size], false}} =
                 call(:describe, [Bridge.Tensor.new!(bin, {:u, 8}, {size})])
      end
    end

    test "results: binary and tensor below and above the threshold" do
      for size <- [@threshold - 1, @threshold] do
        assert {:ok, bin} = call(:make_bytes, [size, 7])
        assert is_binary(bin) and byte_size(bin) == size

        assert {:ok, %Bridge.Tensor{dtype: {:u, 8}, shape: {^size}}} =
                 call(:make_tensor, ["|u1", [size]])
      end
    end

    test "nested containers with large values inside" do
      big = :binary.copy("q", 2 * @threshold)
      arg = %{"list" => [big, {Bridge.Buffer.new(big)}], "small" => "s"}
      assert {:ok, back} = call(:identity, [arg])
      assert back == %{"list" => [big, {big}], "small" => "s"}
    end
  end
end
