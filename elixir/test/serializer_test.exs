defmodule Bridge.SerializerTest.Point do
  @moduledoc false
  defstruct [:x, :y]
end

defmodule Bridge.SerializerTest.Blob do
  @moduledoc false
  defstruct [:data]
end

defmodule Bridge.SerializerTest.Fragile do
  @moduledoc false
  defstruct [:data]
end

defmodule Bridge.SerializerTest.Unknown do
  @moduledoc false
  defstruct [:n]
end

defmodule Bridge.SerializerTest do
  # Custom types (protocol/formats/custom.md): the Bridge.Serializer registry,
  # the $bb_custom term and custom slice frames Bridge.Encoder writes and
  # Bridge.Decoder reads, and end to end with Python serializers
  # (elixir/test/handlers/bbt_formats.py): both directions inline (INL) and
  # through slices (REG), an older version read on both sides, unknown type /
  # unsupported version / failing serializer errors with the worker kept, and
  # the plain-map fallback when encode fails.
  use ExUnit.Case, async: false

  import Bitwise
  import Bridge.Test.BridgeCase
  import ExUnit.CaptureLog

  alias Bridge.{Error, Serializer}
  alias Bridge.SerializerTest.{Blob, Fragile, Point, Unknown}

  doctest Bridge.Serializer

  @moduletag timeout: 300_000
  @moduletag :capture_log

  @inl BSerInl
  @reg BSerReg

  setup_all do
    start_supervised!(
      {Bridge, bridge_opts(@inl, pool_size: 1, threshold: 1_099_511_627_776)},
      id: :inl
    )

    start_supervised!({Bridge, bridge_opts(@reg, pool_size: 1, threshold: 1)}, id: :reg)
    :ok
  end

  setup do
    register_point(2)

    :ok =
      Serializer.register(Blob,
        name: "bbt.Blob",
        version: 1,
        encode: fn %Blob{data: d} -> d end,
        decode: fn
          "bad", _ -> {:error, :refused}
          "raise", _ -> raise ArgumentError, "blob decoder exploded"
          "weird", _ -> :neither_ok_nor_error
          d, 1 -> {:ok, %Blob{data: d}}
        end
      )

    :ok =
      Serializer.register(Fragile,
        name: "bbt.Fragile",
        version: 1,
        encode: fn %Fragile{data: d} -> d end,
        decode: fn d, _ -> {:ok, %Fragile{data: d}} end
      )

    :ok =
      Serializer.register(Unknown,
        name: "bbt.ElixirOnly",
        version: 1,
        encode: fn %Unknown{n: n} -> <<n::64>> end,
        decode: fn <<n::64>>, _ -> {:ok, %Unknown{n: n}} end
      )

    Bridge.reset_format_stats()

    on_exit(fn ->
      Enum.each([Point, Blob, Fragile, Unknown], &Serializer.unregister/1)
    end)

    :ok
  end

  # bbt.Point: version 1 is two float32, version 2 two float64 (as in Python).
  defp register_point(version, opts \\ []) do
    :ok =
      Serializer.register(
        Point,
        Keyword.merge(
          [
            name: "bbt.Point",
            version: version,
            reads: [1, 2],
            encode: fn
              %Point{x: x, y: y} when version == 1 -> <<x::float-little-32, y::float-little-32>>
              %Point{x: x, y: y} -> <<x::float-little-64, y::float-little-64>>
            end,
            decode: fn
              <<x::float-little-32, y::float-little-32>>, 1 -> {:ok, %Point{x: x, y: y}}
              <<x::float-little-64, y::float-little-64>>, 2 -> {:ok, %Point{x: x, y: y}}
              other, v -> {:error, {:bad_point, v, byte_size(other)}}
            end
          ],
          opts
        )
      )
  end

  defp call(pool, fun, args),
    do: Bridge.call({:bbt_formats, fun}, args, pool: pool, timeout: 60_000)

  defp stat(direction, form, reason) do
    Enum.find_value(Bridge.format_stats(), 0, fn
      %{direction: ^direction, form: ^form, reason: ^reason, count: c} -> c
      _ -> nil
    end)
  end

  defp region(@reg, form), do: :"#{form}_slice"
  defp region(@inl, form), do: form

  ## The registry

  test "register validates every option" do
    ok = [name: "bbt.X", version: 1, encode: & &1, decode: fn d, _ -> {:ok, d} end]

    bad = [
      {[name: ""], :name},
      {[name: String.duplicate("n", 256)], :name},
      {[name: <<255>>], :name},
      {[name: :atom], :name},
      {[version: 0], :version},
      {[version: 4_294_967_296], :version},
      {[version: 1.0], :version},
      {[reads: [0]], :reads},
      {[reads: :all], :reads},
      {[encode: fn -> :x end], :encode},
      {[decode: fn d -> d end], :decode},
      {[colour: :red], :colour}
    ]

    for {opts, field} <- bad do
      assert {:error, %Error{kind: :bad_call, reason: :bad_option, field: ^field}} =
               Serializer.register(Blob, Keyword.merge(ok, opts)),
             inspect(opts)
    end

    for module <- [String, :no_such_module_bbt, Bridge.Tensor, Bridge.Table, "Point"] do
      assert {:error, %Error{field: :module}} = Serializer.register(module, ok)
    end

    assert {:error, %Error{field: :name} = e} =
             Serializer.register(Unknown, Keyword.put(ok, :name, "bbt.Point"))

    assert e.message =~ "Point"
  end

  test "registering again replaces; unregister by module or name; registered/0 lists" do
    assert %Serializer{name: "bbt.Point", version: 2, reads: [1, 2]} = Serializer.fetch(Point)
    assert Serializer.fetch("bbt.Point").module == Point

    :ok =
      Serializer.register(Point,
        name: "bbt.Point2",
        version: 7,
        encode: & &1,
        decode: fn d, _ -> {:ok, d} end
      )

    assert Serializer.fetch("bbt.Point") == nil
    assert %Serializer{version: 7, reads: [7]} = Serializer.fetch("bbt.Point2")
    assert "bbt.Point2" in Enum.map(Serializer.registered(), & &1.name)

    assert :ok = Serializer.unregister("bbt.Point2")
    assert Serializer.fetch(Point) == nil
    assert :ok = Serializer.unregister(Point)
    register_point(2)
    assert :ok = Serializer.unregister(Point)
    assert Serializer.fetch("bbt.Point") == nil
  end

  ## The wire forms (no Python)

  defp encode(args, threshold) do
    {:ok, terms, frames} = Bridge.Test.Wire.encode(args, [], threshold)
    {terms, frames}
  end

  defp decode(term), do: Bridge.Test.Wire.decode(term)

  test "a registered struct goes as $bb_custom inline, a custom frame in a slice" do
    p = %Point{x: 1.5, y: -2.0}
    data = <<1.5::float-little-64, -2.0::float-little-64>>

    assert {[{:"$bb_custom", "bbt.Point", 2, ^data}, [%{p: {:"$bb_custom", _, _, _}}]], %{}} =
             encode([p, [%{p: p}]], 1 <<< 40)

    assert {[{:"$bb_slice", :custom, name}], frames} = encode([p], 1)
    {h, meta, payload} = frames[name]
    {:ok, id} = Bridge.NIF.xxh3_64("bbt.Point")
    assert {h.format, h.codec, h.schema_id, h.schema_version} == {4, 0, id, 2}
    assert :erlang.binary_to_term(meta) == {"bbt.Point", 2}
    assert payload == data

    assert {:ok, ^p} = decode({:"$bb_custom", "bbt.Point", 2, data})

    assert {:ok, %Point{x: 1.5, y: -2.0}} =
             decode(
               {:"$bb_custom", "bbt.Point", 1, <<1.5::float-little-32, -2.0::float-little-32>>}
             )
  end

  test "reading errors say what to register" do
    assert {:error, %Error{kind: :bad_call, reason: :unknown_type} = e} =
             decode({:"$bb_custom", "bbt.Nobody", 3, "x"})

    assert e.message =~ "bbt.Nobody"
    assert e.message =~ "version 3"
    assert e.message =~ "Bridge.Serializer.register"

    assert {:error, %Error{kind: :bad_call, reason: :unsupported_version} = e} =
             decode({:"$bb_custom", "bbt.Point", 3, "x"})

    assert e.message =~ "version 3"
    assert e.message =~ "[1, 2]"

    for {data, text} <- [
          {"bad", ":refused"},
          {"raise", "blob decoder exploded"},
          {"weird", "neither"}
        ] do
      assert {:error, %Error{kind: :bad_call, reason: :serializer_failed} = e} =
               decode({:"$bb_custom", "bbt.Blob", 1, data})

      assert e.message =~ text
      assert e.message =~ "bbt.Blob"
    end
  end

  test "an encode that fails sends the plain map and logs a warning" do
    :ok = register_point(2, encode: fn _ -> raise "no can do" end)
    p = %Point{x: 1, y: 2}

    log =
      capture_log(fn ->
        assert {[map], %{}} = encode([p], 1 <<< 40)
        assert map == p and is_map_key(map, :__struct__)
      end)

    assert log =~ "bbt.Point"
    assert log =~ "Bridge.SerializerTest.Point"
    assert log =~ "no can do"
    assert stat(:to_python, :etf, :encode_failed) == 1

    :ok = register_point(2, encode: fn _ -> :not_a_binary end)
    log = capture_log(fn -> assert {[^p], %{}} = encode([p], 1 <<< 40) end)
    assert log =~ ":not_a_binary"

    # iodata is fine
    :ok = register_point(2, encode: fn %Point{} -> ["a", ?b, ["c"]] end)
    assert {[{:"$bb_custom", "bbt.Point", 2, "abc"}], %{}} = encode([p], 1 <<< 40)
  end

  ## End to end

  test "Elixir structs reach Python as the registered class, and come back" do
    for pool <- [@inl, @reg] do
      p = %Point{x: 1.25, y: -3.5}
      assert {:ok, {"Point", 1.25, -3.5}} = call(pool, :describe, [p])

      assert stat(:to_python, region(pool, :custom), :threshold) +
               stat(:to_python, region(pool, :custom), :below_threshold) == 1

      assert {:ok, [{"Point", 1.25, -3.5}, {"Point", 1.25, -3.5}]} =
               call(pool, :describe, [[p, p]])

      assert {:ok, ^p} = call(pool, :echo, [p])
      assert stat(:from_python, region(pool, :custom), :received) >= 1
      Bridge.reset_format_stats()
    end
  end

  test "Python objects of a registered class arrive as the struct" do
    for pool <- [@inl, @reg] do
      assert {:ok, %Point{x: 1.5, y: -2.0}} = call(pool, :point, [1.5, -2.0])
      assert stat(:from_python, region(pool, :custom), :received) == 1

      expected = for i <- 0..4, do: %Point{x: i * 1.0, y: -i * 1.0}
      assert {:ok, ^expected} = call(pool, :points, [5])
      Bridge.reset_format_stats()
    end
  end

  test "an older version stays readable on both sides" do
    for pool <- [@inl, @reg] do
      # Python writes version 1 (float32); this side reads [1, 2]
      assert {:ok, 1} = call(pool, :set_point_version, [1])

      try do
        assert {:ok, %Point{x: 1.5, y: -2.0}} = call(pool, :point, [1.5, -2.0])
      after
        assert {:ok, 2} = call(pool, :set_point_version, [2])
      end

      # this side writes version 1; Python reads (1, 2)
      register_point(1)
      assert {:ok, {"Point", 0.5, 4.0}} = call(pool, :describe, [%Point{x: 0.5, y: 4.0}])
      register_point(2)
    end
  end

  test "results Elixir cannot read are :bad_call errors and the worker is kept" do
    for pool <- [@inl, @reg] do
      [before] = worker_os_pids(pool)

      assert {:error, %Error{kind: :bad_call, reason: :unknown_type} = e} =
               call(pool, :secret, [5])

      assert e.message =~ "bbt.Secret"
      assert e.message =~ "Bridge.Serializer.register"

      assert {:ok, 3} = call(pool, :set_point_version, [3])

      try do
        assert {:error, %Error{kind: :bad_call, reason: :unsupported_version} = e} =
                 call(pool, :point, [1.0, 2.0])

        assert e.message =~ "version 3"
      after
        assert {:ok, 2} = call(pool, :set_point_version, [2])
      end

      assert {:error, %Error{kind: :bad_call, reason: :serializer_failed} = e} =
               call(pool, :blob, ["bad"])

      assert e.message =~ ":refused"

      assert {:error, %Error{kind: :bad_call, reason: :serializer_failed}} =
               call(pool, :blob, ["raise"])

      assert {:ok, %Blob{data: "fine"}} = call(pool, :blob, ["fine"])
      assert worker_os_pids(pool) == [before]
    end
  end

  test "arguments Python cannot read are :bad_call errors and the worker is kept" do
    for pool <- [@inl, @reg] do
      [before] = worker_os_pids(pool)

      # a type Python has no serializer for
      assert {:error, %Error{kind: :bad_call, reason: :unknown_type} = e} =
               call(pool, :describe, [%Unknown{n: 1}])

      assert e.message =~ "bbt.ElixirOnly"

      # a version Python does not read
      register_point(3)

      assert {:error, %Error{kind: :bad_call, reason: :unsupported_version}} =
               call(pool, :describe, [%Point{x: 1.0, y: 2.0}])

      register_point(2)

      # Python's decoder raises
      assert {:error, %Error{kind: :bad_call, reason: :serializer_failed} = e} =
               call(pool, :describe, [%Fragile{data: "bad"}])

      assert e.message =~ "fragile payload refused"

      assert {:ok, {"Fragile", "ok"}} = call(pool, :describe, [%Fragile{data: "ok"}])
      assert worker_os_pids(pool) == [before]
    end
  end

  test "an encode that fails sends the plain map to Python, with a warning" do
    :ok = register_point(2, encode: fn _ -> raise "no can do" end)

    for pool <- [@inl, @reg] do
      log =
        capture_log(fn ->
          assert {:ok, {"other", text}} = call(pool, :describe, [%Point{x: 1, y: 2}])
          assert text =~ "Atom:'__struct__':Atom:'Elixir.Bridge.SerializerTest.Point'"
          assert text =~ "Atom:'x':int:1"
        end)

      assert log =~ "serializer \"bbt.Point\""
      assert log =~ "no can do"
    end
  end
end
