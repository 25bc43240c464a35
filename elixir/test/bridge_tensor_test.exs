defmodule Bridge.TensorBridgeTest do
  # The tensor format (protocol/formats/tensor.md) across real workers: every
  # dtype and order, 0-d and empty, bundles and COO, both directions, inline and
  # through slices — and the handler sees the same Python value either way
  # (invariant 7).
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  alias Bridge.Tensor
  alias Bridge.Tensor.{Bundle, COO}

  @moduletag timeout: 300_000

  setup_all do
    # REG: every non-empty payload through a slice; INL: everything inline
    start_supervised!({Bridge, bridge_opts(BTReg, pool_size: 1, threshold: 1)},
      id: :reg
    )

    start_supervised!(
      {Bridge, bridge_opts(BTInl, pool_size: 1, threshold: 1_099_511_627_776)},
      id: :inl
    )

    start_supervised!({Bridge, bridge_opts(BTDef, pool_size: 1)}, id: :def)
    :ok
  end

  @bridges [BTReg, BTInl]

  defp call(pool, fun, args), do: Bridge.call({:bbt_handlers, fun}, args, pool: pool)

  defp both(fun, args) do
    [reg, inl] = for pool <- @bridges, do: call(pool, fun, args)
    assert reg == inl, "slice and inline forms differ for #{fun}: #{inspect({reg, inl})}"
    reg
  end

  defp sha(bin), do: :crypto.hash(:sha256, bin) |> Base.encode16(case: :lower)

  @record {"struct", 16, [{"x", "<f8", 0}, {"n", {"subarray", ">i2", [2]}, 8}, {"s", "|S3", 12}]}

  @dtypes [
    {:s, 8},
    {:s, 16},
    {:s, 32},
    {:s, 64},
    {:u, 8},
    {:u, 16},
    {:u, 32},
    {:u, 64},
    {:f, 16},
    {:f, 32},
    {:f, 64},
    {:c, 64},
    {:c, 128},
    {:numpy, "|b1"},
    {:numpy, ">i2"},
    {:numpy, ">u8"},
    {:numpy, ">f4"},
    {:numpy, ">c16"},
    {:numpy, "<M8[ns]"},
    {:numpy, ">M8[D]"},
    {:numpy, "<m8[10ms]"},
    {:numpy, "|S5"},
    {:numpy, "<U3"},
    {:numpy, ">U2"},
    {:numpy, "|V3"},
    {:numpy, @record}
  ]

  defp random_data(dtype, n) do
    size = Bridge.Tensor.Dtype.itemsize(dtype)

    case dtype do
      {:numpy, "|b1"} -> for _ <- 1..n//1, into: "", do: <<Enum.random(0..1)>>
      _ -> :crypto.strong_rand_bytes(size * n)
    end
  end

  defp info(%Tensor{} = t) do
    order = if t.order == :f, do: "F", else: "C"
    dims = Tuple.to_list(t.shape)
    {"ndarray", Bridge.Tensor.Dtype.to_descr(t.dtype), dims, order, false, sha(t.data)}
  end

  describe "Elixir -> Python -> Elixir, every dtype" do
    for dtype <- @dtypes,
        {shape, order} <- [{{2, 3}, :c}, {{2, 3}, :f}, {{}, :c}, {{0, 4}, :c}] do
      test "#{inspect(dtype)} #{inspect(shape)} #{order}" do
        dtype = unquote(Macro.escape(dtype))
        shape = unquote(Macro.escape(shape))
        n = shape |> Tuple.to_list() |> Enum.product()
        t = Tensor.new!(random_data(dtype, n), dtype, shape, order: unquote(order))

        # the handler sees the same ndarray (type, dtype, order, read-only, bytes)
        # whether the tensor came inline or through a slice
        assert {:ok, info} = both(:tensor_info, [t])
        assert info == info(t)

        for pool <- @bridges do
          assert {:ok, ^t} = call(pool, :identity, [t])
        end
      end
    end
  end

  describe "Python -> Elixir -> Python, every kind NumPy makes" do
    cases = [
      {"bool", {:numpy, "|b1"}},
      {"big_i4", {:numpy, ">i4"}},
      {"big_f8", {:numpy, ">f8"}},
      {"datetime", {:numpy, "<M8[ns]"}},
      {"timedelta", {:numpy, ">m8[10ms]"}},
      {"bytes", {:numpy, "|S5"}},
      {"unicode", {:numpy, "<U3"}},
      {"void", {:numpy, "|V4"}},
      {"record",
       {:numpy,
        {"struct", 16, [{"x", "<f8", 0}, {"n", {"subarray", ">i2", [2]}, 8}, {"s", "|S3", 12}]}}},
      {"f4", {:f, 32}},
      {"u2", {:u, 16}},
      {"c16", {:c, 128}}
    ]

    for {name, dtype} <- cases, suffix <- ["", "_F", "_0d", "_empty"] do
      test "#{name}#{suffix}" do
        dtype = unquote(Macro.escape(dtype))
        case_name = unquote(name <> suffix)

        for pool <- @bridges do
          assert {:ok, %Tensor{} = t} = call(pool, :make_numpy, [case_name])
          assert t.dtype == dtype

          assert t.order == if(String.ends_with?(case_name, "_F"), do: :f, else: :c)

          assert t.shape ==
                   (cond do
                      String.ends_with?(case_name, "_0d") -> {}
                      String.ends_with?(case_name, "_empty") -> {0, 3}
                      true -> {2, 3}
                    end)

          # back into Python: exactly what Python made (read-only now)
          assert {:ok, info} = call(pool, :tensor_info, [t])
          assert info == info(t)

          if pool == BTReg and byte_size(t.data) > 0,
            do: assert_shared_binary(t.data)
        end
      end
    end

    test "to_list of Python-made values" do
      {:ok, t} = call(BTInl, :make_numpy, ["bool"])
      assert Tensor.to_list(t) == [false, true, false, true, false, true]
      {:ok, u} = call(BTReg, :make_numpy, ["unicode_0d"])
      assert Tensor.to_list(u) == ["abc"]
      {:ok, f} = call(BTReg, :make_numpy, ["u2_F"])
      {:ok, c} = call(BTReg, :make_numpy, ["u2"])
      assert Tensor.to_list(f) == Tensor.to_list(c)
      assert Tensor.to_order(f, :c).data == c.data
    end

    test "a big Fortran-ordered big-endian array crosses the default threshold zero-copy" do
      assert {:ok, t} = call(BTDef, :make_big_fortran, [300, 200])
      assert {t.dtype, t.shape, t.order} == {{:numpy, ">f8"}, {300, 200}, :f}
      assert_shared_binary(t.data)
      assert Enum.take(Tensor.to_list(t), 3) == [0.0, 1.0, 2.0]
      assert {:ok, info} = call(BTDef, :tensor_info, [t])
      assert info == info(t)
    end
  end

  describe "bundles" do
    test "Elixir bundle -> Python Bundle (dict of str -> read-only ndarray) -> Elixir" do
      w = Tensor.from_list!(Enum.map(1..12, &(&1 * 1.0)), {:f, 32}, {3, 4})

      bundle =
        Bundle.new!(%{
          "layer.weight" => Tensor.to_order(w, :f),
          "layer.bias" => Tensor.from_list!([0.5, 1.5, 2.5, 3.5], {:f, 32}, {4}),
          "mask" => Tensor.from_list!([true, false], {:numpy, "|b1"}, {2}),
          "step" => Tensor.from_list!([7], {:s, 64}, {}),
          "empty" => Tensor.new!(<<>>, {:u, 8}, {0})
        })

      expected = for {name, t} <- bundle.tensors, into: %{}, do: {name, info(t)}
      assert {:ok, {"Bundle", ^expected}} = both(:tensor_info, [bundle])

      assert {:ok, ["empty", "layer.bias", "layer.weight", "mask", "step"]} =
               both(:bundle_names, [bundle])

      for pool <- @bridges do
        assert {:ok, ^bundle} = call(pool, :identity, [bundle])
      end
    end

    test "a Python Bundle comes back as %Bridge.Tensor.Bundle{}, one slice, zero-copy" do
      for pool <- @bridges ++ [BTDef], n <- [2, 5000] do
        assert {:ok, %Bundle{tensors: tensors} = b} = call(pool, :make_bundle, [n])
        assert Map.keys(tensors) == ["layer.bias", "layer.weight", "mask", "when"]
        assert tensors["layer.weight"].shape == {n, 4}
        assert tensors["mask"].dtype == {:numpy, "|b1"}
        assert tensors["when"].dtype == {:numpy, "<M8[s]"}
        assert Tensor.to_list(tensors["layer.bias"]) == [0.0, 1.0, 2.0, 3.0]

        if pool == BTReg or (pool == BTDef and n == 5000) do
          # every tensor is a sub-binary of the same slice (the BEAM copies
          # sub-binaries of at most 64 bytes when a message carries them)
          mappings =
            for {_, t} <- tensors,
                byte_size(t.data) > 64,
                do: assert_shared_binary(t.data)

          assert length(Enum.uniq(mappings)) <= 1 and (n == 2 or mappings != [])
        end

        assert {:ok, {"Bundle", infos}} = call(pool, :tensor_info, [b])
        assert infos == for({name, t} <- tensors, into: %{}, do: {name, info(t)})
      end
    end

    test "a plain dict of arrays stays a plain map" do
      assert {:ok, %{"a" => %Tensor{dtype: {:s, 32}}}} = both(:make_plain_dict_of_arrays, [])
    end
  end

  describe "sparse COO" do
    test "both directions, inline and through slices" do
      idx = Tensor.from_list!([0, 1, 2, 4, 0, 3], {:s, 64}, {2, 3})
      vals = Tensor.from_list!([1.0, 2.0, 3.0], {:numpy, ">f4"}, {3})
      coo = COO.new!(idx, vals, {3, 5})

      assert {:ok, {"COO", [3, 5], ii, vi, _dense}} = both(:tensor_info, [coo])
      assert {ii, vi} == {info(idx), info(vals)}
      assert {:ok, dense} = both(:coo_dense, [coo])

      assert Tensor.to_list(dense) ==
               [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0]

      for pool <- @bridges, do: assert({:ok, ^coo} = call(pool, :identity, [coo]))

      for pool <- @bridges do
        assert {:ok, %COO{shape: {4, 5}} = c} = call(pool, :make_coo, [4])
        assert c.values.dtype == {:numpy, ">f4"} and c.indices.shape == {2, 4}
        assert Tensor.to_list(c.values) == [1.0, 2.0, 3.0, 4.0]
      end

      # index bounds are checked by the Python reader
      bad =
        COO.new!(
          Tensor.from_list!([9], {:s, 64}, {1, 1}),
          Tensor.from_list!([1.0], {:f, 64}, {1}),
          {3}
        )

      for pool <- @bridges do
        assert {:error, %Bridge.Error{kind: :bad_call, reason: :bad_term}} =
                 call(pool, :identity, [bad])
      end
    end
  end

  describe "refusals" do
    test "bfloat16 and malformed tensors are refused before anything is sent" do
      bf = %Tensor{dtype: {:bf, 16}, shape: {1}, data: <<0::16>>}

      assert {:error, %Bridge.Error{kind: :bad_call, reason: :bad_tensor} = e} =
               call(BTReg, :identity, [bf])

      assert e.message =~ "bfloat16"
      bad_bundle = %Bundle{tensors: %{"a" => bf}}
      assert {:error, %Bridge.Error{reason: :bad_tensor}} = call(BTReg, :identity, [bad_bundle])
    end

    test "an object array from Python is an error naming the dtype" do
      for pool <- @bridges do
        assert {:error, %Bridge.Error{kind: :bad_call} = e} = call(pool, :make_object_array, [])
        assert e.message =~ "object" and e.message =~ "pickle"
        assert {:ok, 3} = call(pool, :add, [1, 2])
      end
    end
  end
end
