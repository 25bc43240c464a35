defmodule Bridge.TelemetryTest do
  # The [:beambridge, :call, ...] events (Bridge.Telemetry), through the
  # built-in handlers and through a stand-in :telemetry module, with real calls
  # to real workers.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase
  import ExUnit.CaptureLog

  alias Bridge.Telemetry

  @moduletag timeout: 120_000

  setup do
    start_supervised!({Bridge, bridge_opts(Tel, pool_size: 1, threshold: 1024)})
    on_exit(fn -> for %{id: id} <- Telemetry.list_handlers([]), do: Telemetry.detach(id) end)
    :ok
  end

  defp listen(id, events), do: listen_telemetry(id, events)

  test "a call emits start and stop with its timings and its result" do
    listen("calls", [[:beambridge, :call, :start], [:beambridge, :call, :stop]])
    big = :binary.copy("x", 100_000)
    assert {:ok, ^big} = Bridge.call({:bbt_handlers, :identity}, [big], pool: Tel)

    assert_receive {:event, [:beambridge, :call, :start], start, meta}
    assert %{monotonic_time: t0, system_time: wall} = start

    assert is_integer(t0) and
             abs(wall - System.system_time()) < System.convert_time_unit(60, :second, :native)

    assert %{pool: Tel, module: :bbt_handlers, function: :identity, telemetry_span_context: ref} =
             meta

    assert_receive {:event, [:beambridge, :call, :stop], stop, stop_meta}
    assert %{duration: d, monotonic_time: t1, encode: e, wait: w, decode: dec} = stop
    assert t1 - t0 == d and d > 0
    assert e > 0 and w > 0 and dec >= 0 and e + w + dec <= d
    # the copy into shared memory, the worker's own parts, the bytes that crossed
    assert %{copy: c, queue: q, transfer: tr, handler: h, bytes: 200_000} = stop
    assert %{worker_decode: wd, worker_encode: we} = stop
    assert c > 0 and e + c + w + dec <= d and q + tr + wd + h + we <= w
    assert %{result: :ok, error: nil, error_kind: nil, telemetry_span_context: ^ref} = stop_meta

    # an error comes back as a stop with the error
    assert {:error, _} = Bridge.call({:bbt_handlers, :fail}, ["x"], pool: Tel)
    assert_receive {:event, [:beambridge, :call, :stop], _, %{result: :error} = md}
    assert %{error_kind: :python_exception, error: %Bridge.Error{python_type: "ValueError"}} = md

    # so does a call refused before it is sent
    assert {:error, _} = Bridge.call({:bbt_handlers, :identity}, [make_ref()], pool: Tel)
    assert_receive {:event, [:beambridge, :call, :stop], %{wait: 0}, %{error_kind: :bad_call}}
  end

  test "a call that raises emits exception and raises on" do
    listen("raises", [[:beambridge, :call, :exception]])

    assert_raise RuntimeError, "boom", fn ->
      Bridge.Call.Events.span({:m, :f}, [pool: Tel], fn -> raise "boom" end)
    end

    assert_receive {:event, [:beambridge, :call, :exception], %{duration: d}, meta}
    assert d >= 0
    assert %{kind: :error, reason: %RuntimeError{}, stacktrace: [_ | _], function: :f} = meta
  end

  test "attach, attach_many, detach and list_handlers behave as :telemetry's" do
    fun = fn _, _, _, _ -> :ok end
    assert :ok = Telemetry.attach("a", [:x], fun, 1)
    assert {:error, :already_exists} = Telemetry.attach("a", [:y], fun, 1)
    assert [%{id: "a", event_name: [:x], config: 1}] = Telemetry.list_handlers([:x])
    assert :ok = Telemetry.detach("a")
    assert {:error, :not_found} = Telemetry.detach("a")
    assert Telemetry.list_handlers([]) == []
  end

  test "a handler that raises is detached and logged; the call is not affected" do
    :ok =
      Telemetry.attach("bad", [:beambridge, :call, :stop], fn _, _, _, _ -> raise "no" end, nil)

    log =
      capture_log(fn ->
        assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Tel)
      end)

    assert log =~ "telemetry handler \"bad\" failed"
    assert Telemetry.list_handlers([]) == []
    assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Tel)
  end

  test "with :telemetry loaded, every event goes through it too" do
    Process.register(self(), :bridge_telemetry_test)

    Code.compile_string("""
    defmodule :telemetry do
      def execute(event, measurements, metadata) do
        if pid = Process.whereis(:bridge_telemetry_test),
          do: send(pid, {:telemetry, event, measurements, metadata})

        :ok
      end
    end
    """)

    on_exit(fn ->
      :code.purge(:telemetry)
      :code.delete(:telemetry)
      :code.purge(:telemetry)
    end)

    assert Telemetry.enabled?()
    assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Tel)

    assert_receive {:telemetry, [:beambridge, :call, :start], %{system_time: _},
                    %{function: :add}}

    assert_receive {:telemetry, [:beambridge, :call, :stop], %{duration: _}, %{result: :ok}}
  end

  test "with nobody listening and metrics off, a call measures nothing" do
    Bridge.Metrics.enable(false)
    on_exit(fn -> Bridge.Metrics.enable(true) end)
    refute Telemetry.enabled?()
    calls = fn -> get_in(Bridge.Metrics.snapshot(), [{Tel, "bbt_handlers.add"}, :calls]) end
    before = calls.()
    assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Tel)
    assert Process.get(:"$bb_decode_time") == nil
    assert calls.() == before
  end
end
