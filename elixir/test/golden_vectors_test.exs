defmodule Bridge.GoldenVectorsTest do
  # Every protocol/vectors/control/*.json and protocol/vectors/terms/*.json becomes a
  # test by name (SPEC §14); protocol/gen_vectors.py writes them.
  #
  # Control frames a worker sends go through what the BEAM runs on them: the frame
  # through Bridge.Worker.handle_info/2 (Bridge.Control.split/1, then the message
  # checks) with a worker state of its own making (no port, no OS process, no
  # pool); a message that needs objects the state cannot have (an announced arena,
  # lent slices) through Bridge.Worker.Objects, as the worker calls it. An answer's
  # body is decoded as the caller decodes it (Bridge.Control.decode_body/1).
  # Control frames the BEAM sends must be the bytes Bridge.Control.frame/2 and
  # call_frame/6 write, and decode with binary_to_term(_, [:safe]).
  #
  # Data terms are results from Python: Bridge.Control.decode_body/1, then
  # Bridge.Decoder.decode_result(term, {}, false), rendered as term JSON.
  #
  # A vector with "xfail" (the two sides disagree; see the vector) is skipped.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog, only: [with_log: 1]

  alias Bridge.{Arena, Control, Decoder, Error}
  alias Bridge.Test.TermJSON
  alias Bridge.Worker.Objects

  @root Path.expand("../../protocol/vectors", __DIR__)
  @control @root |> Path.join("control/*.json") |> Path.wildcard() |> Enum.sort()
  @terms @root |> Path.join("terms/*.json") |> Path.wildcard() |> Enum.sort()

  for path <- @control ++ @terms do
    @external_resource path
  end

  # term_to_binary/1 writes atoms as UTF-8 from OTP 26; the vectors hold those bytes.
  @utf8_atoms List.to_integer(:erlang.system_info(:otp_release)) >= 26

  defp data_path(path, ext), do: String.replace_suffix(path, ".json", ext)

  ## The sets

  test "the control vectors hold every message of SPEC §8.3 in its direction" do
    good = for path <- @control, v = TermJSON.decode_file!(path), v["valid"], do: v

    sent = fn from ->
      for v <- good, v["from"] == from, into: MapSet.new() do
        case TermJSON.from_json(v["envelope"]) do
          {:object, kind, _, _, _, _, _} -> {:object, kind}
          {:ok, _, entries, _} -> {:ok, Enum.map(entries, &elem(&1, 0))}
          {:error, _, detail, _} -> {:error, elem(detail, 0)}
          {:call, _, _, _, opts, slices} -> {:call, opts != %{}, slices != []}
          {:log, stream, _} -> {:log, stream}
          tuple when is_tuple(tuple) -> elem(tuple, 0)
          atom -> atom
        end
      end
    end

    beam = sent.("beam")

    for m <- [
          {:object, :arena},
          {:object, :lease_table},
          :object_dropped,
          {:call, false, false},
          {:call, true, false},
          {:call, false, true},
          {:call, true, true},
          :sealed_mapped,
          :shutdown,
          {:object, :lane},
          :lane,
          :element,
          :ack,
          :done,
          :cancel,
          :abort
        ],
        do: assert(m in beam, "no good BEAM frame for #{inspect(m)}")

    worker = sent.("worker")

    for m <- [
          :ready,
          {:object, :arena},
          {:object, :sealed},
          :object_dropped,
          {:ok, []},
          {:ok, [:worker]},
          {:ok, [:sealed]},
          {:ok, [:beam]},
          {:error, :python_exception},
          {:error, :bad_call},
          :released,
          :fallbacks,
          {:log, :stdout},
          {:log, :stderr},
          :lane,
          :element,
          :ack,
          :done
        ],
        do: assert(m in worker, "no good worker frame for #{inspect(m)}")

    bad = for path <- @control, v = TermJSON.decode_file!(path), !v["valid"], do: v["from"]
    assert Enum.count(bad, &(&1 == "beam")) >= 8 and Enum.count(bad, &(&1 == "worker")) >= 8
  end

  test "the term vectors hold every packed dtype of the registry" do
    dtypes =
      for path <- @terms,
          v = TermJSON.decode_file!(path),
          v["valid"],
          {:ok, {:"$bb_packed", dtype, _}} <- [
            Control.decode_body(File.read!(data_path(path, ".etf")))
          ],
          into: MapSet.new(),
          do: dtype

    assert MapSet.new(Bridge.Registry.packed_dtypes()) == dtypes
  end

  ## Control frames

  for path <- @control do
    name = Path.basename(path, ".json")
    vector = TermJSON.decode_file!(path)
    if reason = vector["xfail"], do: @tag(skip: reason)

    test "control #{name}" do
      v = TermJSON.decode_file!(unquote(path))
      bin = File.read!(data_path(unquote(path), ".bin"))

      assert v["name"] == unquote(name)
      assert byte_size(bin) == v["frame_size"]
      assert String.starts_with?(unquote(name), if(v["valid"], do: "good_", else: "bad_"))

      case {v["from"], v["valid"]} do
        {"beam", true} -> beam_frame(v, bin)
        {"beam", false} -> bad_beam_frame(v, bin)
        {"worker", true} -> worker_frame(v, bin)
        {"worker", false} -> bad_worker_frame(v, bin)
      end
    end
  end

  # The envelope and body decode to the vector's terms, and the BEAM writes exactly
  # these bytes for them.
  defp beam_frame(v, bin) do
    envelope = TermJSON.from_json(v["envelope"])
    assert {:ok, decoded, body} = Control.split(bin)
    assert decoded === envelope
    assert TermJSON.normalize(TermJSON.render(decoded)) === TermJSON.normalize(v["envelope"])
    check_body(v["body"], body, &:erlang.binary_to_term(&1, [:safe]))
    assert beam_message?(envelope, body != "")

    written =
      case envelope do
        {:call, id, module, function, opts, slices} ->
          Control.call_frame(id, module, function, opts, slices, body)

        {:element, _, _, _, _, _} ->
          Control.frame(envelope, body)

        _ ->
          Control.frame(envelope)
      end
      |> IO.iodata_to_binary()

    if @utf8_atoms do
      assert written == bin
    else
      # Before OTP 26 term_to_binary/1 writes ATOM_EXT; the same term, with the
      # encoding OTP 26 made the default, gives the vector's bytes.
      assert <<size::32, env::binary-size(size), rest::binary>> = written
      assert :erlang.binary_to_term(env) === envelope and rest == body
      utf8 = :erlang.term_to_binary(envelope, minor_version: 2)
      assert <<byte_size(utf8)::32, utf8::binary, body::binary>> == bin
    end
  end

  # The receiver is the worker. Where the BEAM's frame reader refuses the frame
  # too, its error is in the vector; otherwise the BEAM reads the frame and the
  # envelope is no message of §8.3 the BEAM may send.
  defp bad_beam_frame(v, bin) do
    case v["error"] do
      %{"beam" => beam} ->
        assert {:error, %Error{} = e} = Control.split(bin)
        check_error(e, beam)

      %{"reason" => _} ->
        assert {:ok, envelope, body} = Control.split(bin)
        refute beam_message?(envelope, body != "")
    end
  end

  defp worker_frame(v, bin) do
    envelope = TermJSON.from_json(v["envelope"])
    assert {:ok, decoded, body} = Control.split(bin)
    assert decoded === envelope
    assert TermJSON.normalize(TermJSON.render(decoded)) === TermJSON.normalize(v["envelope"])
    check_body(v["body"], body, &ok!(Control.decode_body(&1)))
    beam_accepts(envelope, bin)
  end

  defp bad_worker_frame(v, bin) do
    {state, reply} = run_worker(bin, :busy, 7)

    error =
      case reply do
        {:error, %Error{} = e} ->
          assert state.phase == :killing
          e

        # accepted by the worker's process; the caller refuses the body
        {:ok, {body, {}, _worker, _timing}} ->
          assert {:error, %Error{} = e} = Control.decode_body(body)
          e
      end

    check_error(error, side(v["error"], "beam"))
  end

  defp check_body(nil, body, _decode), do: assert(body == "")

  defp check_body(json, body, decode) do
    expected = TermJSON.from_json(json)
    assert decode.(body) === expected
  end

  # What the BEAM does with a worker frame it must accept.
  defp beam_accepts({:ready, _, _}, bin) do
    {state, nil} = run_worker(bin, :starting, nil)
    assert state.phase == :ready
  end

  # Opening the object (§2) needs the worker's process; the message checks are
  # Objects.object/3's: a sealed object is noted, an arena is opened at once.
  defp beam_accepts({:object, kind, pid, _, _, _, _} = envelope, _bin) do
    case {kind, Objects.object(%Objects{}, envelope, pid)} do
      {:sealed, result} -> assert {:ok, %Objects{}} = result
      {:arena, {:error, %Error{kind: :arena}}} -> :ok
    end
  end

  # An answer naming slices: the worker's state knows the arenas and the sealed
  # objects the worker announced and the slices it was lent; plan/3 is what
  # Bridge.Worker checks the entries with (running the plan needs the objects).
  defp beam_accepts({:ok, _id, [_ | _] = entries, released}, _bin) do
    {:ok, arena} = Arena.new(limit: 64 * 1024 * 1024, min_arena: 4 * 1024 * 1024)

    try do
      objects =
        Enum.reduce(entries, %Objects{}, fn
          {:worker, id, _, _, _, _}, acc ->
            %{acc | peers: Map.put(acc.peers, id, :announced)}

          {:sealed, id, _, _, _}, acc ->
            %{acc | sealed: Map.put(acc.sealed, id, {:object, :sealed, 0, 0, id, 0, 0})}

          {:beam, id, offset, generation, start, length}, acc ->
            {:ok, s} = Arena.alloc(arena, start + length)
            s = %{s | arena_id: id, offset: offset, generation: generation}
            %{acc | lent: Map.put(acc.lent, {id, offset}, s)}
        end)

      assert {:ok, steps, objects} = Objects.plan(objects, entries, false)
      assert length(steps) == length(entries)
      for {:pin, s, _, _} <- steps, do: :ok = Arena.unhold(s)
      assert {:ok, %Objects{}} = Objects.released(objects, released)
    after
      Arena.close(arena)
    end
  end

  # Since 2.5 an answer may end with the worker's timings: the caller gets them.
  defp beam_accepts({tag, id, detail, released, {_, _, _} = timings}, bin)
       when tag in [:ok, :error] do
    beam_accepts({tag, id, detail, released}, bin)
    {_state, reply} = run_worker(bin, :busy, id)
    if tag == :ok, do: assert({:ok, {_, {}, _, {_sent, ^timings}}} = reply)
  end

  defp beam_accepts({:ok, id, [], _released}, bin) do
    {state, reply} = run_worker(bin, :busy, id)
    assert {:ok, {body, {}, _worker, {_sent, _timings}}} = reply
    assert {:ok, _} = Control.decode_body(body)
    assert state.phase == :ready
  end

  defp beam_accepts({:error, id, {tag, _, _, _}, _}, bin) when tag == :python_exception do
    {state, reply} = run_worker(bin, :busy, id)
    assert {:error, %Error{kind: :python_exception}} = reply
    assert state.phase == :ready
  end

  defp beam_accepts({:error, id, {:bad_call, reason, _}, _}, bin) do
    {state, reply} = run_worker(bin, :busy, id)
    assert {:error, %Error{kind: :bad_call, reason: ^reason}} = reply
    assert state.phase == :ready
  end

  # Streams (SPEC §8.6), to a call with a result stream and argument stream 1,
  # whose relay is this process: an element goes to the relay with its plan
  # (running the plan needs the objects), an ack to the caller (this process),
  # the end is the call's reply, through the relay.
  defp beam_accepts({:element, id, 0, seq, point, entries}, bin) do
    {state, nil} = run_worker(bin, :busy, id, stream_call(seq - 1))
    assert state.phase == :busy and state.call.streams.result.received == seq
    assert_received {:element, ^id, ^seq, ^point, _body, plan, _port}
    assert length(plan) == length(entries)
  end

  # A chunk of a chunked result binary: to the relay, copied out there.
  defp beam_accepts({:element, id, sid, seq, nil, entries}, bin) when sid > 0 do
    {state, nil} = run_worker(bin, :busy, id, stream_call())
    assert state.phase == :busy and state.call.streams.chunks[sid].received == seq
    assert_received {:chunk, ^id, ^sid, ^seq, _body, plan, _port}
    assert length(plan) == length(entries)
  end

  defp beam_accepts({:ack, id, sid, seq}, bin) do
    {state, nil} = run_worker(bin, :busy, id, stream_call())
    assert state.phase == :busy
    assert_received {:bridge_stream, _worker, ^id, {:ack, ^sid, ^seq}}
  end

  defp beam_accepts({:done, id, 0, count, checksum}, bin) do
    {state, nil} = run_worker(bin, :busy, id, stream_call(count))
    assert state.phase == :ready
    assert_received {:reply, _from, {:ok, {:stream_done, ^count, ^checksum}}}
  end

  # object_dropped, released, log: taken in any phase, no answer.
  defp beam_accepts(_envelope, bin) do
    {state, nil} = run_worker(bin, :busy, 7)
    assert state.phase == :busy
  end

  # The frame through Bridge.Worker.handle_info/2, as from the worker's port, in
  # `phase` with call `call_id` in flight: {the new state, what the caller was
  # answered or nil}. The state has no OS process (so a kill signals nobody) and
  # no pool (casts to it go nowhere).
  defp run_worker(bin, phase, call_id, streams \\ nil) do
    port = make_ref()
    tag = make_ref()

    call =
      if phase == :busy,
        do:
          Bridge.Worker.call_state(
            %{id: call_id, module: :m, function: :f},
            {self(), tag},
            streams
          )

    state = %Bridge.Worker{
      config: %Bridge.Config{name: :"Bridge.GoldenVectorsTest.no_pool"},
      id: "golden-vectors",
      port: port,
      phase: phase,
      call: call,
      os_pids: [],
      objects: %Objects{peers: %{1 => :announced}}
    }

    {{:noreply, state}, _log} =
      with_log(fn -> Bridge.Worker.handle_info({port, {:data, bin}}, state) end)

    if state.phase == :killing, do: Process.cancel_timer(state.timer)

    receive do
      {^tag, reply} -> {state, reply}
    after
      0 -> {state, nil}
    end
  end

  # A call with a result stream (`received` elements came) and argument stream
  # 1, its caller and relay this process.
  defp stream_call(received \\ 4) do
    result = %{window: 4, timeout: 5_000, received: received, acked: received, cancelled: false}
    %{consumer: self(), ref: make_ref(), relay: self(), result: result, feeds: [1], chunks: %{}}
  end

  # SPEC §8.3, BEAM -> worker.
  defp beam_message?(:shutdown, false), do: true
  defp beam_message?(:lane, false), do: true

  defp beam_message?({:object, kind, pid, fd, id, size, nonce}, false)
       when kind in [:arena, :lease_table, :lane],
       do: uints?([pid, fd, id], 32) and uints?([size, nonce], 64)

  defp beam_message?({:object_dropped, id}, false), do: uint?(id, 32)

  defp beam_message?({:call, id, module, function, opts, slices}, true),
    do:
      uint?(id, 64) and id > 0 and name?(module) and name?(function) and is_map(opts) and
        slice_refs?(slices)

  defp beam_message?({:sealed_mapped, ids}, false), do: uints?(ids, 32)

  # SPEC §8.6
  defp beam_message?({:element, id, sid, seq, point, slices}, true),
    do:
      uint?(id, 64) and id > 0 and uint?(sid, 64) and uint?(seq, 64) and seq > 0 and
        (is_binary(point) or point == nil) and slice_refs?(slices)

  defp beam_message?({:ack, id, sid, seq}, false), do: uints?([id, sid, seq], 64) and id > 0
  defp beam_message?({:cancel, id, sid}, false), do: uints?([id, sid], 64) and id > 0

  defp beam_message?({:done, id, sid, count, checksum}, false),
    do: uints?([id, sid, count, checksum], 64) and id > 0

  defp beam_message?({:abort, id, sid, message}, false),
    do: uints?([id, sid], 64) and id > 0 and is_binary(message)

  defp beam_message?(_envelope, _body?), do: false

  defp uint?(n, bits), do: is_integer(n) and n >= 0 and n < Bitwise.bsl(1, bits)
  defp uints?([h | t], bits), do: uint?(h, bits) and uints?(t, bits)
  defp uints?(tail, _bits), do: tail == []
  defp name?(name), do: is_binary(name) or (is_atom(name) and name not in [nil, true, false])

  defp slice_refs?([{_, _, _, _} = ref | t]),
    do: uints?(Tuple.to_list(ref), 64) and slice_refs?(t)

  defp slice_refs?(tail), do: tail == []

  ## Data terms

  for path <- @terms do
    name = Path.basename(path, ".json")
    vector = TermJSON.decode_file!(path)
    if reason = vector["xfail"], do: @tag(skip: reason)

    test "term #{name}" do
      v = TermJSON.decode_file!(unquote(path))
      etf = File.read!(data_path(unquote(path), ".etf"))

      assert v["name"] == unquote(name)
      assert String.starts_with?(unquote(name), if(v["valid"], do: "good_", else: "bad_"))

      # "refused_by" names a side that cannot hold the value (SPEC §10), not the BEAM here
      if v["valid"] do
        :ok = TermJSON.ensure_atoms(v["value"])
        assert {:ok, value} = decode_result(etf)
        assert TermJSON.normalize(TermJSON.render(value)) === TermJSON.normalize(v["value"])
      else
        assert {:error, %Error{} = e} = decode_result(etf)
        check_error(e, side(v["error"], "beam"))
      end
    end
  end

  defp decode_result(etf) do
    with {:ok, term} <- Control.decode_body(etf), do: Decoder.decode_result(term, {}, false)
  end

  ## Errors

  defp side(%{"beam" => _} = error, side), do: Map.fetch!(error, side)
  defp side(error, _side), do: error

  defp check_error(%Error{} = e, expected) do
    assert Atom.to_string(e.reason) == expected["reason"], Exception.message(e)
    if field = expected["field"], do: assert(to_string(e.field) == field, Exception.message(e))
    if kind = expected["kind"], do: assert(Atom.to_string(e.kind) == kind, Exception.message(e))
  end

  defp ok!({:ok, term}), do: term
end
