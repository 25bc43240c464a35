defmodule Bridge.TensorTest do
  # Bridge.Tensor and friends without a worker: constructors, Nx's binary layout,
  # NumPy dtypes, orders, and the wire forms of protocol/formats/tensor.md.
  use ExUnit.Case, async: true

  alias Bridge.Tensor
  alias Bridge.Tensor.{Bundle, COO, Dtype, Wire}

  doctest Bridge.Tensor.Dtype
  doctest Bridge.Tensor.Bundle
  doctest Bridge.Tensor.COO

  describe "Nx's binary layout" do
    test "an f32 tensor's data is little-endian floats, row-major" do
      t = Tensor.from_list!([1.0, 2.5, -3.0, 4.0, 0.5, 6.0], {:f, 32}, {2, 3})

      assert t.data ==
               <<1.0::float-32-little, 2.5::float-32-little, -3.0::float-32-little,
                 4.0::float-32-little, 0.5::float-32-little, 6.0::float-32-little>>

      assert {t.dtype, t.shape, t.order} == {{:f, 32}, {2, 3}, :c}
    end

    test "every Nx type packs as Nx does" do
      cases = [
        {{:s, 8}, [-128, 127], <<-128::signed-8, 127::signed-8>>},
        {{:s, 16}, [-2, 300], <<-2::signed-little-16, 300::signed-little-16>>},
        {{:s, 32}, [-(2 ** 31)], <<-(2 ** 31)::signed-little-32>>},
        {{:s, 64}, [2 ** 63 - 1], <<2 ** 63 - 1::signed-little-64>>},
        {{:u, 8}, [255], <<255>>},
        {{:u, 16}, [65_535], <<65_535::little-16>>},
        {{:u, 32}, [7], <<7::little-32>>},
        {{:u, 64}, [2 ** 64 - 1], <<2 ** 64 - 1::little-64>>},
        {{:f, 16}, [1.5], <<1.5::float-little-16>>},
        {{:f, 64}, [-0.25], <<-0.25::float-little-64>>},
        {{:c, 64}, [{1.0, -2.0}], <<1.0::float-little-32, -2.0::float-little-32>>},
        {{:c, 128}, [{0.5, 3.0}], <<0.5::float-little-64, 3.0::float-little-64>>}
      ]

      for {dtype, list, bin} <- cases do
        t = Tensor.from_list!(list, dtype, {length(list)})
        assert t.data == bin, inspect(dtype)
        assert Tensor.to_list(t) == list
        assert Tensor.new!(bin, dtype, {length(list)}) == t
      end
    end

    test "NaN and infinities have names, as in Nx" do
      for bits <- [16, 32, 64] do
        t = Tensor.from_list!([:nan, :infinity, :neg_infinity, 1.0], {:f, bits}, {4})
        assert Tensor.to_list(t) == [:nan, :infinity, :neg_infinity, 1.0]
      end
    end

    test "values that do not fit are errors, never truncated" do
      for {list, dtype} <- [
            {[128], {:s, 8}},
            {[-1], {:u, 16}},
            {[2 ** 64], {:u, 64}},
            {[1.0e300], {:f, 32}},
            {["x"], {:f, 64}},
            {[1.5], {:s, 32}},
            {[2], {:numpy, "|b1"}},
            {["toolong"], {:numpy, "|S3"}}
          ] do
        assert {:error, %Bridge.Error{reason: :bad_tensor, field: :data}} =
                 Tensor.from_list(list, dtype, {1}),
               inspect({list, dtype})
      end

      assert {:error, %Bridge.Error{field: :data, value: 2, limit: 3}} =
               Tensor.from_list([1, 2], {:u, 8}, {3})
    end
  end

  describe "NumPy dtypes without an Nx counterpart" do
    test "carry NumPy's bytes and convert to and from lists" do
      cases = [
        {"|b1", [true, false, true], <<1, 0, 1>>},
        {">i4", [1, -2], <<1::big-32, -2::signed-big-32>>},
        {">u2", [258], <<1, 2>>},
        {">f8", [1.5], <<1.5::float-big-64>>},
        {">c8", [{1.0, 2.0}], <<1.0::float-big-32, 2.0::float-big-32>>},
        {"<M8[ns]", [1_700_000_000_000_000_000], <<1_700_000_000_000_000_000::little-64>>},
        {">m8[10ms]", [-5], <<-5::signed-big-64>>},
        {"|S3", ["ab", ""], <<"ab", 0, 0, 0, 0>>},
        {"<U2", ["é", "ab"], <<233::little-32, 0::32, ?a::little-32, ?b::little-32>>},
        {">U1", ["z"], <<?z::big-32>>},
        {"|V2", [<<1, 2>>], <<1, 2>>}
      ]

      for {descr, list, bin} <- cases do
        t = Tensor.from_list!(list, {:numpy, descr}, {length(list)})
        assert t.dtype == {:numpy, descr}
        assert t.data == bin, descr
        assert Tensor.to_list(t) == list
      end
    end

    test "records keep their layout: itemsize, offsets, nested fields" do
      record =
        {"struct", 16,
         [
           {"x", "<f8", 0},
           {"n", {"subarray", ">i2", [2]}, 8},
           {"p", {"struct", 2, [{"q", "|u1", 1}]}, 12}
         ]}

      assert Dtype.itemsize({:numpy, record}) == 16
      t = Tensor.new!(:binary.copy(<<7>>, 32), {:numpy, record}, {2})
      assert Tensor.to_list(t) == [:binary.copy(<<7>>, 16), :binary.copy(<<7>>, 16)]

      for bad <- [
            {"struct", 4, [{"x", "<f8", 0}]},
            {"struct", 8, [{"x", "<f4", 0}, {"x", "<f4", 4}]},
            {"struct", 8, []},
            {"struct", 8, [{"", "<f4", 0}]},
            {"struct", 8, [{"a", {"subarray", {"subarray", "<i4", [1]}, [1]}, 0}]}
          ] do
        assert {:error, %Bridge.Error{field: :dtype}} = Dtype.normalize({:numpy, bad}),
               inspect(bad)
      end
    end

    test "Nx types given as NumPy strings are normalised; bad strings are refused" do
      assert Tensor.new!(<<0::32>>, {:numpy, "<f4"}, {1}).dtype == {:f, 32}
      assert Tensor.new!(<<0>>, {:numpy, "|u1"}, {1}).dtype == {:u, 8}

      for bad <- [
            "|O",
            "<O8",
            "|i4",
            "<i1",
            "=f4",
            "<f16",
            "<f3",
            "<b1",
            "<S3",
            "|U3",
            "<M8[1ms]",
            "<f4[s]",
            "<M4",
            "<i4,<i4",
            "",
            42
          ] do
        assert {:error, %Bridge.Error{reason: :bad_tensor, field: :dtype}} =
                 Tensor.new(<<>>, {:numpy, bad}, {0}),
               inspect(bad)
      end
    end

    test "bfloat16 is refused with advice" do
      assert {:error, e} = Tensor.new(<<0::16>>, {:bf, 16}, {1})
      assert e.reason == :bad_tensor and e.message =~ "bfloat16" and e.message =~ "Nx.as_type"
      assert {:error, _} = Tensor.new(<<0::8>>, {:f, 8}, {1})
    end
  end

  describe "order" do
    test "defaults to :c; :f data is column-major; to_list is row-major" do
      assert %Tensor{dtype: {:u, 8}, shape: {1}, data: <<1>>}.order == :c
      f = Tensor.new!(<<1, 4, 2, 5, 3, 6>>, {:u, 8}, {2, 3}, order: :f)
      assert Tensor.to_list(f) == [1, 2, 3, 4, 5, 6]
      assert Tensor.to_order(f, :c).data == <<1, 2, 3, 4, 5, 6>>
      assert Tensor.to_order(Tensor.to_order(f, :c), :f) == f

      t3 = Tensor.from_list!(Enum.to_list(1..24), {:s, 16}, {2, 3, 4})
      assert t3 |> Tensor.to_order(:f) |> Tensor.to_list() == Enum.to_list(1..24)
      assert t3 |> Tensor.to_order(:f) |> Tensor.to_order(:c) == t3
    end

    test "an array contiguous both ways is recorded as :c, as NumPy does" do
      assert Tensor.new!(<<1, 2>>, {:u, 8}, {2}, order: :f).order == :c
      assert Tensor.new!(<<1, 2>>, {:u, 8}, {2, 1}, order: :f).order == :c
      assert Tensor.new!(<<>>, {:u, 8}, {0, 3}, order: :f).order == :c
      assert Tensor.new!(<<1, 2, 3, 4>>, {:u, 8}, {2, 2}, order: :f).order == :f

      assert {:error, %{field: :order}} =
               Tensor.validate(%Tensor{dtype: {:u, 8}, shape: {1}, data: <<1>>, order: :k})
    end
  end

  describe "wire forms (protocol/formats/tensor.md)" do
    test "every tensor uses the descriptor forms; schema 0 is not a tensor schema" do
      t = Tensor.from_list!([1, 2], {:s, 32}, {2})
      desc = %{"dtype" => "<i4", "shape" => [2], "order" => "C"}
      assert Wire.inline(t) == {:"$bb_tensor", desc, t.data}
      {payload, opts} = Wire.frame(t)
      assert payload == t.data
      assert {opts[:schema_id], opts[:schema_version]} == {1, 1}
      assert :erlang.binary_to_term(opts[:metadata]) == desc

      # a schema-0 frame (the removed v1 form) is refused for a tensor handle
      frame = %Bridge.Frame{
        header: %Bridge.Header{format: 1, schema_id: 0, schema_version: 0},
        metadata: :erlang.term_to_binary({"<i4", [2]}),
        payload: t.data
      }

      assert {:error, %Bridge.Error{kind: :bad_frame, field: :schema_id}} =
               Wire.from_frame(:tensor, frame)
    end

    test "other dtypes and Fortran order use the version-1 descriptor" do
      t = Tensor.new!(<<1, 0, 0, 1>>, {:numpy, "|b1"}, {2, 2}, order: :f)
      desc = %{"dtype" => "|b1", "shape" => [2, 2], "order" => "F"}
      assert Wire.inline(t) == {:"$bb_tensor", desc, t.data}
      {_, opts} = Wire.frame(t)
      assert {opts[:schema_id], opts[:schema_version]} == {1, 1}
      assert :erlang.binary_to_term(opts[:metadata]) == desc
      assert Wire.from_inline(desc, t.data) == {:ok, t}
    end

    test "a bundle is one payload, each tensor 64-byte aligned, names sorted" do
      a = Tensor.from_list!([1, 2, 3], {:u, 8}, {3})
      b = Tensor.from_list!([1.0], {:f, 64}, {1})
      bundle = Bundle.new!(%{"b" => b, "a" => a})
      {iodata, opts} = Wire.frame(bundle)
      # iodata: the tensors are copied into the slice one by one, never joined first
      assert is_list(iodata)
      payload = IO.iodata_to_binary(iodata)
      assert opts[:schema_id] == 2
      assert payload == <<1, 2, 3>> <> :binary.copy(<<0>>, 61) <> b.data
      %{"tensors" => [ea, eb]} = :erlang.binary_to_term(opts[:metadata])
      assert {ea["name"], ea["offset"], eb["name"], eb["offset"]} == {"a", 0, "b", 64}
      assert Wire.payload_size(bundle) == byte_size(payload)

      frame = %Bridge.Frame{
        header: %Bridge.Header{format: 1, codec: 0, schema_id: 2, schema_version: 1},
        metadata: opts[:metadata],
        payload: payload
      }

      assert Wire.from_frame(:tensor_bundle, frame) == {:ok, bundle}
      assert {:error, %{field: :schema_id}} = Wire.from_frame(:sparse_coo, frame)

      bad_meta = :erlang.term_to_binary(%{"tensors" => [%{ea | "offset" => 8}, eb]})

      assert {:error, %Bridge.Error{kind: :bad_frame, field: :offset}} =
               Wire.from_frame(:tensor_bundle, %{frame | metadata: bad_meta})
    end

    test "a COO array" do
      idx = Tensor.from_list!([0, 2], {:s, 64}, {1, 2})
      vals = Tensor.from_list!([true, true], {:numpy, "|b1"}, {2})
      coo = COO.new!(idx, vals, {3})

      assert {:"$bb_sparse_coo", [3], [{"indices", _, _}, {"values", _, _}]} = Wire.inline(coo)
      {:"$bb_sparse_coo", shape, entries} = Wire.inline(coo)
      assert Wire.from_inline_coo(shape, entries) == {:ok, coo}
      assert {:error, %{field: :indices}} = COO.new(vals, vals, {2})
    end
  end
end
