defmodule Bridge.RegistryTest.Blob do
  @moduledoc false
  defstruct [:data]
end

defmodule Bridge.RegistryTest.Sample do
  @moduledoc false
  use Bridge.Schema, name: "bbt.RegistrySample", version: "1.2"
  field(:step, :uint32)
  field(:note, :string)
end

defmodule Bridge.RegistryTest do
  # protocol/registry.json against what the BEAM's code does: the atoms a
  # worker may send (Bridge.Worker), the header's format and codec codes, the
  # format policies and packed dtypes (Bridge.Format), the handle kinds
  # Bridge.Encoder writes and Bridge.Decoder reads (formats, tensor schemas, the
  # kinds whose values are copied), the object kinds Bridge.Peer opens, the keys
  # of Bridge.format_stats/0, and every error reason the library builds. Most
  # modules load their tables from Bridge.Registry at compile time; these tests
  # check the behaviour that follows, and fail when the code uses a reason,
  # kind, policy, dtype or stats key the registry lacks (source scans find the
  # literals: reasons, policies compared, unsuitable codes).
  use ExUnit.Case, async: false

  import Bitwise

  alias Bridge.{Arena, Arrow, Buffer, Decoder, Encoder, Error, Format, Header, Peer, Registry}
  alias Bridge.{Serializer, Table, Tensor}
  alias Bridge.RegistryTest.{Blob, Sample}
  alias Bridge.Tensor.{Bundle, COO, Wire}

  doctest Bridge.Registry

  @moduletag :capture_log

  @root Path.expand("../..", __DIR__)
  @data Bridge.JSON.decode!(File.read!(Path.join(@root, "protocol/registry.json")))

  defp elixir_side(table),
    do: for({name, %{"sides" => sides}} <- table, "elixir" in sides, into: MapSet.new(), do: name)

  # Names are compared as strings: the test creates no atoms of its own.
  defp strings(atoms), do: MapSet.new(atoms, &Atom.to_string/1)

  ## The file

  test "the registry is what protocol/registry.json says" do
    assert Enum.map(Registry.reasons(), &Atom.to_string/1) ==
             Enum.sort(Map.keys(@data["reasons"]))

    assert Enum.all?(Registry.reasons(), &(Registry.reason_meaning(&1) =~ ~r/\A[^\n]+\z/))
    assert Registry.reason_meaning(:no_such_reason) == nil

    assert Enum.map(Registry.policies(), &Atom.to_string/1) ==
             Enum.map(@data["policies"], & &1["name"])

    assert Registry.packed_dtypes() == @data["packed_dtypes"]
  end

  test "every registered name is an atom a safe decode knows once the registry is loaded" do
    Code.ensure_loaded!(Registry)

    names =
      Map.keys(@data["reasons"]) ++
        Map.keys(@data["messages"]) ++
        Map.keys(@data["tags"]) ++
        Map.keys(@data["handle_kinds"]) ++ Map.keys(@data["records_layouts"])

    for name <- names do
      # built by hand from the name's bytes: the test itself creates no atom
      etf = <<131, 119, byte_size(name), name::binary>>
      assert is_atom(:erlang.binary_to_term(etf, [:safe])), name
      assert :erlang.binary_to_term(etf, [:safe]) in Registry.atoms(), name
    end
  end

  test "a malformed registry fails with the path of the entry" do
    path = Path.join(System.tmp_dir!(), "bbtreg-#{System.unique_integer([:positive])}.json")

    try do
      File.write!(path, ~s({"a": 1, "a": 2}))
      error = assert_raise ArgumentError, fn -> Registry.Load.read!(path) end
      assert error.message =~ ~s(the key "a" appears twice)
      assert error.message =~ Path.basename(path)

      assert_raise ArgumentError, ~r/reasons\.x\.kind: must be a string/, fn ->
        Registry.Load.fetch!(path, %{"kind" => 1}, "kind", "reasons.x", &is_binary/1, "a string")
      end
    after
      File.rm(path)
    end
  end

  ## Reasons and the atoms a worker may send

  test "the worker's protocol atoms are all registered names" do
    assert Bridge.Worker.protocol_atoms() -- Registry.atoms() == []
  end

  test "unsupported_dtype, which a worker may send, is a registered wire reason" do
    assert :unsupported_dtype in Registry.wire_reasons()
    assert Registry.reason_kind(:unsupported_dtype) == :format
  end

  test "the forms and reasons a worker may report in {:fallbacks, ...} are stats names of both sides" do
    {forms, reasons} = Bridge.FormatStats.fallback_names()
    stats = @data["stats"]

    for {names, table} <- [{forms, stats["forms"]}, {reasons, stats["reasons"]}], name <- names do
      assert %{"sides" => sides} = table[Atom.to_string(name)], "#{name} is no stats name"
      assert "elixir" in sides and "python" in sides, "#{name}: #{inspect(sides)}"
    end
  end

  # (Before the rewrite of Bridge.Worker the list lacked :unsupported_dtype,
  # which the registry makes a wire reason: this test is what catches that.)
  test "every atom a worker may send is among the worker's protocol atoms" do
    messages =
      Map.keys(@data["messages"]) -- for({n, %{"from" => "elixir"}} <- @data["messages"], do: n)

    names = messages ++ Map.keys(@data["tags"]) ++ Map.keys(@data["records_layouts"])

    sent =
      MapSet.new(names ++ Map.keys(@data["slice_sources"]))
      |> MapSet.union(strings(Map.keys(Registry.handle_kinds())))
      |> MapSet.union(strings(Map.keys(Registry.object_kinds())))
      |> MapSet.union(strings(Registry.wire_reasons()))

    assert MapSet.difference(sent, strings(Bridge.Worker.protocol_atoms())) == MapSet.new()
  end

  test "every reason the library builds is registered as one the BEAM produces" do
    built = Bridge.RegistryTest.Reasons.scan(Path.join(@root, "elixir/lib"))
    assert Map.has_key?(built, :bad_magic) and Map.has_key?(built, :format_unsuitable)
    registered = elixir_side(@data["reasons"])

    missing =
      for {reason, where} <- built, Atom.to_string(reason) not in registered, do: {reason, where}

    assert missing == [], "reasons built in elixir/lib but not in protocol/registry.json"
  end

  ## Codes, policies, dtypes

  test "the header's format and codec codes" do
    formats = for c <- 0..255, (n = Header.format_name(c)) != :unknown, into: %{}, do: {n, c}
    assert formats == Registry.formats()
    codecs = for c <- 0..255, (n = Header.codec_name(c)) != :unknown, into: %{}, do: {n, c}
    assert codecs == Registry.codecs()
  end

  test "the format policies" do
    assert Format.policies() == Registry.policies()
    for policy <- Registry.policies(), do: assert(Format.check_policy(policy) == {:ok, policy})
    assert {:error, %Error{reason: :bad_option}} = Format.check_policy(:json)

    # every policy the selection code tests for (`policy == :x`, `policy in [...]`)
    {_, compared} =
      Macro.prewalk(format_sources(), MapSet.new(), fn
        {:==, _, [{:policy, _, ctx}, p]} = node, acc when is_atom(ctx) and is_atom(p) ->
          {node, MapSet.put(acc, p)}

        {:in, _, [{:policy, _, ctx}, ps]} = node, acc when is_atom(ctx) and is_list(ps) ->
          {node, Enum.into(ps, acc)}

        node, acc ->
          {node, acc}
      end)

    assert MapSet.size(compared) >= 3
    assert MapSet.difference(strings(compared), strings(Registry.policies())) == MapSet.new()
  end

  test "the packed dtypes: exactly those Bridge.Format unpacks" do
    candidates =
      for o <- ["<", "|", ">", "="], k <- ~w(i u f c b), n <- [1, 2, 4, 8, 16], do: "#{o}#{k}#{n}"

    accepted = for d <- candidates, match?({:ok, []}, Format.unpack(d, <<>>)), do: d
    assert Enum.sort(accepted) == Enum.sort(Registry.packed_dtypes())

    # one range per integer dtype, narrowest first
    ranges = [{0, 1}, {0, 255}, {-1, 255}, {0, 65_535}, {-1, 65_535}, {0, (1 <<< 32) - 1}]
    ranges = ranges ++ [{-1, 1 <<< 32}, {0, 1 <<< 63}]
    ints = for {lo, hi} <- ranges, do: Format.int_dtype(lo, hi)
    assert ints == Registry.packed_dtypes() -- ["<f8"]

    # the dtype of a float list is registered too
    assert {:packed, :forced, float, _, 2} = Format.select_list([1.5, 2.5], :packed)
    assert float in Registry.packed_dtypes() and float not in ints
  end

  ## Handle kinds

  defp arena! do
    {:ok, arena} = Arena.new(limit: 64 <<< 20, min_arena: 1 <<< 20)
    on_exit(fn -> Arena.close(arena) end)
    arena
  end

  defp peer!(arena, %Arena.Slice{arena_id: id}) do
    {:ok, announcement} = Arena.announcement(arena, id)
    {:ok, peer} = Peer.open(announcement)
    peer
  end

  test "the handle kinds Bridge.Decoder accepts in a result" do
    candidates =
      Map.keys(Registry.handle_kinds()) ++
        Map.keys(Registry.formats()) ++ [:table, :bundle, :coo, :region, :raw, :etf]

    # a handle of a kind it reads, naming a view of an argument: the value for
    # :binary, an error naming the kind for the others
    accepted =
      for kind <- Enum.uniq(candidates),
          result = Decoder.decode_result({:"$bb_slice", kind, 0}, {{:binary, "x"}}, false),
          match?({:ok, "x"}, result) or match?({:error, %Error{value: ^kind}}, result),
          do: kind

    assert Enum.sort(accepted) == Enum.sort(Map.keys(Registry.handle_kinds()))
  end

  # The value of a result handle of `kind` to a slice of this node's own arena
  # holding one frame, read through the peer path as a worker's slice is, and
  # whether the value copied the payload (the lease already ended).
  defp read(arena, kind, payload, frame_opts) do
    {:ok, slice} = Arena.put(arena, payload, frame_opts)
    {:ok, lease} = Peer.lease(peer!(arena, slice), slice.offset, slice.length, nil, nil)
    resolved = {{:lease, lease, slice.length, slice.generation}}
    result = Decoder.decode_result({:"$bb_slice", kind, 0}, resolved, false)
    :erlang.garbage_collect()
    copied? = Peer.release(lease) == :ok
    Arena.release(slice)
    {result, copied?}
  end

  defp refuses_other_formats(arena, kind) do
    for {format, _} <- Registry.formats(), format != Registry.handle_kinds()[kind] do
      assert {{:error, %Error{}}, _} = read(arena, kind, :binary.copy("x", 64), format: format),
             "a #{kind} handle read a frame of format #{format}"
    end
  end

  test "every handle kind refuses frames of other formats" do
    arena = arena!()
    for kind <- Map.keys(Registry.handle_kinds()), do: refuses_other_formats(arena, kind)
  end

  # {kind, schema id} pairs where Bridge.Tensor.Wire (or Bridge.Format for
  # :packed) and the registry disagree.
  defp schema_mismatches do
    for {kind, allowed} <- Registry.handle_kind_schemas(),
        %{"id" => id, "version" => v} <- @data["tensor_schemas"],
        header = %Header{format: 1, codec: 0, schema_id: id, schema_version: v},
        frame = %Bridge.Frame{header: header, metadata: :erlang.term_to_binary(%{}), payload: ""},
        refused =
          (case kind do
             :packed -> Format.unpack_frame(frame) |> elem(1) =~ "schema"
             _ -> match?({:error, %Error{field: :schema_id}}, Wire.from_frame(kind, frame))
           end),
        refused != id not in allowed,
        do: {kind, id}
  end

  test "tensor-frame kinds read exactly their schemas" do
    assert schema_mismatches() == []
  end

  defp register_blob do
    :ok =
      Serializer.register(Blob,
        name: "bbt.RegistryBlob",
        version: 1,
        encode: fn %Blob{data: d} -> d end,
        decode: fn d, 1 -> {:ok, %Blob{data: d}} end
      )

    on_exit(fn -> Serializer.unregister(Blob) end)
  end

  defp tensor, do: Tensor.new!(:binary.copy(<<1, 0, 0, 0>>, 32), {:s, 32}, {4, 8})

  defp coo do
    idx = Tensor.from_list!([0, 1, 2, 0], {:s, 64}, {2, 2})
    {:ok, coo} = COO.new(idx, Tensor.from_list!([5.0, 7.0], {:f, 64}, {2}), {3, 3})
    coo
  end

  defp rows(n), do: for(i <- 1..n, do: %{"id" => i, "name" => "n#{i}"})

  test "the frames Bridge.Encoder writes for each handle kind" do
    register_blob()
    arena = arena!()
    {:ok, table} = Table.from_rows(rows(3))

    args = [
      :binary.copy("b", 100),
      %Buffer{data: :binary.copy("u", 100)},
      tensor(),
      %Bundle{tensors: %{"a" => tensor()}},
      coo(),
      table,
      Enum.to_list(1..300),
      rows(200),
      %Blob{data: :binary.copy("c", 100)},
      [%Sample{step: 1, note: "a"}, %Sample{step: 2, note: "b"}]
    ]

    {:ok, terms, slices} = Encoder.encode_args(args, arena, 1)
    slices = List.to_tuple(slices)

    written =
      for {:"$bb_slice", kind, index} <- terms, into: %{} do
        {:ok, head} = Arena.read(elem(slices, index), 0, 32)
        <<_::binary-size(10), format, _::binary-size(13), schema_id::little-64>> = head
        {kind, {Header.format_name(format), schema_id}}
      end

    Enum.each(Tuple.to_list(slices), &Arena.release/1)
    assert Enum.sort(Map.keys(written)) == Enum.sort(Map.keys(Registry.handle_kinds()))

    for {kind, {format, schema_id}} <- written do
      assert format == Registry.handle_kinds()[kind], "kind #{kind}"
      schemas = Registry.handle_kind_schemas()[kind]
      assert schemas == nil or schema_id in schemas, "kind #{kind} schema #{schema_id}"
    end
  end

  test "the kinds whose values the BEAM copies out of the frame" do
    register_blob()
    arena = arena!()
    {tensor, tensor_opts} = Wire.frame(tensor())
    {bundle, bundle_opts} = Wire.frame(%Bundle{tensors: %{"a" => tensor()}})
    {coo, coo_opts} = Wire.frame(coo())
    {:ok, table} = Table.from_rows(rows(3))
    {:records, _, :rows, stream, n, c} = Format.select_list(rows(10), :arrow)
    records_meta = %{"layout" => "rows", "num_rows" => n, "num_columns" => c}
    packed = for x <- 1..100, into: <<>>, do: <<x::little-16>>
    {:ok, id} = Bridge.NIF.xxh3_64("bbt.RegistryBlob")
    {:ok, samples} = Bridge.Schema.Batch.encode(Sample, [%Sample{step: 1, note: "a"}])

    cases = %{
      binary: {:binary.copy("b", 100), format: :raw},
      buffer: {:binary.copy("u", 100), format: :raw},
      tensor: {tensor, tensor_opts},
      tensor_bundle: {bundle, bundle_opts},
      sparse_coo: {coo, coo_opts},
      arrow: {Arrow.encode(table), format: :arrow_stream},
      packed: {packed, format: :tensor, metadata: :erlang.term_to_binary({"<i2", [100]})},
      records: {stream, format: :arrow_stream, metadata: :erlang.term_to_binary(records_meta)},
      custom:
        {:binary.copy("c", 100),
         format: :custom,
         schema_id: id,
         schema_version: 1,
         metadata: :erlang.term_to_binary({"bbt.RegistryBlob", 1})},
      schema_list: {samples, Bridge.Schema.Batch.frame_options("bbt.RegistrySample", "1.2")}
    }

    assert Enum.sort(Map.keys(cases)) == Enum.sort(Map.keys(Registry.handle_kinds()))

    copied =
      for {kind, {payload, opts}} <- cases do
        {{:ok, _value}, copied?} = read(arena, kind, payload, opts)
        {kind, copied?}
      end

    assert Enum.sort(for {kind, true} <- copied, do: kind) == Enum.sort(Registry.copied_kinds())
  end

  test "the object kinds Bridge.Peer opens" do
    pid = String.to_integer(System.pid())

    accepted =
      for kind <- Map.keys(Registry.object_kinds()) ++ [:region, :slice, :table, :raw],
          {:error, %Error{reason: reason}} =
            Peer.open({:object, kind, pid, 1_000_000, 1, 4096, 7}),
          reason != :bad_term,
          do: kind

    # a lane is the BEAM's own object, written by both sides: never a peer's (SPEC §8.5)
    assert Enum.sort(accepted) == Enum.sort(Map.keys(Registry.object_kinds()) -- [:lane])
  end

  test "the signals the BEAM sends a worker: each one Bridge.NIF.kill/2 can send" do
    assert Registry.signals() == %{cancel: :usr1}

    # sent to this very BEAM's pid would be fatal; a pid that cannot exist tells
    # an unknown signal name (badarg) from a known one (esrch)
    for {_name, signal} <- Registry.signals() do
      assert Bridge.NIF.kill(2_147_483_000, signal) == {:error, :esrch}
    end
  end

  ## Format statistics

  test "the format statistics count only registered directions, forms and reasons" do
    register_blob()
    arena = arena!()
    Bridge.reset_format_stats()
    {:ok, table} = Table.from_rows(rows(3))

    values = [
      "small",
      :binary.copy("b", 100),
      %Buffer{data: "u"},
      tensor(),
      table,
      [1, 2, 3],
      Enum.to_list(1..300),
      [1.5, 2.5],
      rows(3),
      rows(200),
      %{"a" => [1, 2], "b" => [3, 4]},
      %Blob{data: "c"}
    ]

    for threshold <- [1, 1 <<< 40], policy <- Registry.policies() do
      {:ok, terms, slices} = Encoder.encode_args(values, arena, threshold, format: policy)
      Enum.each(slices, &Arena.release/1)
      # inline argument terms read as a result: counted as received
      if slices == [], do: assert({:ok, _} = Decoder.decode_result(terms, {}, false))
    end

    # a custom type whose serializer fails goes as its map
    Serializer.unregister(Blob)

    :ok =
      Serializer.register(Blob,
        name: "bbt.RegistryBlob",
        version: 1,
        encode: fn _ -> raise "refused" end,
        decode: fn d, 1 -> {:ok, %Blob{data: d}} end
      )

    {:ok, _, []} = Encoder.encode_args([%Blob{data: "c"}], arena, 1 <<< 40)

    stats = @data["stats"]
    directions = MapSet.new(stats["directions"], & &1["elixir"])
    forms = elixir_side(stats["forms"])
    reasons = elixir_side(stats["reasons"])
    counted = Bridge.format_stats()
    assert length(counted) > 10

    for %{direction: d, form: f, reason: r} <- counted do
      assert "#{d}" in directions and "#{f}" in forms and "#{r}" in reasons, inspect({d, f, r})
    end
  end

  # The modules of format selection: Bridge.Format and Bridge.Format.*.
  defp format_sources do
    lib = Path.join(@root, "elixir/lib/bridge")
    paths = [Path.join(lib, "format.ex") | Path.wildcard(Path.join(lib, "format/*.ex"))]
    assert length(paths) > 1
    for path <- paths, do: Code.string_to_quoted!(File.read!(path))
  end

  test "the unsuitable codes Bridge.Format names" do
    {_, codes} =
      Macro.prewalk(format_sources(), MapSet.new(), fn
        {:unsuitable!, _, [code, _]} = node, acc when is_atom(code) ->
          {node, MapSet.put(acc, code)}

        {:{}, _, [:unsuitable, code, _]} = node, acc when is_atom(code) ->
          {node, MapSet.put(acc, code)}

        node, acc ->
          {node, acc}
      end)

    assert strings(codes) == elixir_side(@data["unsuitable"])
  end
end

defmodule Bridge.RegistryTest.Reasons do
  @moduledoc false
  # Every reason elixir/lib builds an error with, as a literal atom: the second
  # argument of Error.new/3, the :reason of a %Error{} literal, and the
  # arguments of every function that passes one of its parameters on as a
  # reason (found to a fixed point: frame_error/4, Errors.fail/2, ...).

  @spec scan(Path.t()) :: %{atom() => String.t()}
  def scan(dir) do
    modules =
      for path <- Path.wildcard(Path.join(dir, "**/*.ex")),
          module <- modules(Code.string_to_quoted!(File.read!(path))),
          do: Map.put(module, :path, Path.relative_to(path, dir))

    sinks = fix(MapSet.new([{:Error, :new, 1}, {:Error, :__struct__, 0}]), modules)

    for %{name: name, imports: imports, body: body, path: path} <- modules,
        {candidates, fun, args} <- calls(body, [name | imports]),
        {module, ^fun, pos} <- sinks,
        module in candidates and pos < length(args),
        reason = Enum.at(args, pos),
        is_atom(reason) and reason not in [nil, true, false],
        reduce: %{} do
      acc -> Map.put_new(acc, reason, path)
    end
  end

  defp modules(ast) do
    {_, acc} =
      Macro.prewalk(ast, [], fn
        {:defmodule, _, [{:__aliases__, _, parts}, [do: body]]} = node, acc ->
          {node,
           [%{name: List.last(parts), imports: imports(body), defs: defs(body), body: body} | acc]}

        node, acc ->
          {node, acc}
      end)

    acc
  end

  defp imports(body) do
    {_, acc} =
      Macro.prewalk(body, [], fn
        {:defmodule, _, _}, acc ->
          {nil, acc}

        {:import, _, [{:__aliases__, _, parts} | _]} = node, acc ->
          {node, [List.last(parts) | acc]}

        node, acc ->
          {node, acc}
      end)

    acc
  end

  defp defs(body) do
    {_, acc} =
      Macro.prewalk(body, [], fn
        {:defmodule, _, _}, acc ->
          {nil, acc}

        {kind, _, [head, fun_body]} = node, acc when kind in [:def, :defp] ->
          {node, [{head(head), fun_body} | acc]}

        node, acc ->
          {node, acc}
      end)

    acc
  end

  defp head({:when, _, [head | _]}), do: head(head)
  defp head({name, _, params}) when is_list(params), do: {name, params}
  defp head({name, _, _}), do: {name, []}

  # {modules the call may name, function, args}; a def's head is not a call.
  defp calls(ast, local) do
    {_, acc} =
      Macro.prewalk(ast, [], fn
        {kind, _, [_head, body]}, acc when kind in [:def, :defp] ->
          {body, acc}

        {{:., _, [{:__aliases__, _, parts}, fun]}, _, args} = node, acc when is_list(args) ->
          {node, [{[List.last(parts)], fun, args} | acc]}

        {:%, _, [{:__aliases__, _, parts}, {:%{}, _, fields}]} = node, acc ->
          {node, [{[List.last(parts)], :__struct__, [Keyword.get(fields, :reason)]} | acc]}

        {fun, _, args} = node, acc when is_atom(fun) and is_list(args) ->
          {node, [{local, fun, args} | acc]}

        node, acc ->
          {node, acc}
      end)

    acc
  end

  # A function whose parameter `i` reaches a sink's reason position is a sink.
  defp fix(sinks, modules) do
    found =
      for %{name: name, imports: imports, defs: defs} <- modules,
          {{fun, params}, body} <- defs,
          {candidates, callee, args} <- calls(body, [name | imports]),
          {module, ^callee, pos} <- sinks,
          module in candidates and pos < length(args),
          {var, _, ctx} <- [Enum.at(args, pos)],
          is_atom(var) and is_atom(ctx),
          i = Enum.find_index(params, &match?({^var, _, c} when is_atom(c), &1)),
          i != nil,
          into: MapSet.new(),
          do: {name, fun, i}

    all = MapSet.union(sinks, found)
    if all == sinks, do: sinks, else: fix(all, modules)
  end
end
