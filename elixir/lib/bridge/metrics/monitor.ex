defmodule Bridge.Metrics.Monitor do
  @moduledoc false
  # Samples the node's shared memory (Bridge.Metrics.Memory) every
  # `config :beambridge, monitor_interval:` milliseconds (default 5,000): keeps
  # the last @keep samples for the dashboard (history/0), the peaks of what only
  # sampling sees (the workers' arenas and the results held), and emits a
  # [:beambridge, :memory, :sample] event per pool; and evaluates the alerts
  # (Bridge.Metrics.Alerts) on the calls since the last sample, logging and
  # emitting those not fired lately, keeping the last @keep_alerts for
  # Bridge.alerts/0. Started by Bridge.Application.

  use GenServer

  require Logger

  alias Bridge.Metrics.{Alerts, Memory}

  @keep_alerts 50

  @keep 360
  @default_interval 5_000

  @doc false
  def start_link(_arg), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # Samples now (and returns the sample).
  @spec sample_now() :: map()
  def sample_now, do: GenServer.call(__MODULE__, :sample, 30_000)

  @doc false
  # The samples kept, oldest first: `at` (system time, ms), and per pool its
  # arena, held and worker bytes.
  @spec history() :: [map()]
  def history do
    GenServer.call(__MODULE__, :history, 30_000)
  catch
    :exit, _ -> []
  end

  @doc false
  # Per pool, the largest sampled values: %{pool => %{worker_arena_bytes, held_bytes, held_slices}}.
  @spec peaks() :: map()
  def peaks do
    GenServer.call(__MODULE__, :peaks, 30_000)
  catch
    :exit, _ -> %{}
  end

  @doc false
  # The alerts kept, newest first.
  @spec alerts() :: [map()]
  def alerts do
    GenServer.call(__MODULE__, :alerts, 30_000)
  catch
    :exit, _ -> []
  end

  @impl true
  def init(nil) do
    interval = Application.get_env(:beambridge, :monitor_interval, @default_interval)

    state = %{
      interval: interval,
      samples: :queue.new(),
      count: 0,
      peaks: %{},
      alerts: Alerts.new(),
      recent: []
    }

    {:ok, schedule(state)}
  end

  defp schedule(%{interval: i} = state) when is_integer(i) and i > 0 do
    Process.send_after(self(), :tick, i)
    state
  end

  defp schedule(state), do: state

  @impl true
  def handle_call(:sample, _from, state) do
    {sample, state} = sample(state)
    {:reply, sample, state}
  end

  def handle_call(:history, _from, state), do: {:reply, :queue.to_list(state.samples), state}
  def handle_call(:peaks, _from, state), do: {:reply, state.peaks, state}
  def handle_call(:alerts, _from, state), do: {:reply, state.recent, state}

  @impl true
  def handle_info(:tick, state) do
    {_sample, state} = sample(state)
    {:noreply, schedule(state)}
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp sample(state) do
    memory = Memory.snapshot()
    %{at: at, pools: pools} = sample = Memory.sample(memory)

    Enum.each(pools, fn {pool, m} ->
      Bridge.Telemetry.execute(
        [:beambridge, :memory, :sample],
        Map.put(m, :headroom, memory.headroom),
        %{pool: pool}
      )
    end)

    {samples, count} = push(state.samples, state.count, sample)
    peaks = Enum.reduce(pools, state.peaks, &peak/2)
    state = %{state | samples: samples, count: count, peaks: peaks}
    {fired, state} = alert(state, memory, at)
    {Map.merge(memory, %{sample: sample, alerts: fired}), state}
  end

  defp alert(state, memory, now) do
    factor = Application.get_env(:beambridge, :alert_factor, 3)
    interval = Application.get_env(:beambridge, :alert_interval, 60_000)

    {raised, alerts} =
      Alerts.evaluate(state.alerts, Bridge.Metrics.snapshot(), memory, factor: factor)

    {fired, alerts} = Alerts.limit(alerts, raised, now, interval)

    Enum.each(fired, fn a ->
      Logger.warning("beambridge alert: #{a.suggestion}")

      Bridge.Telemetry.execute(
        [:beambridge, :alert],
        %{value: a.value, baseline: a.baseline},
        Map.drop(a, [:value, :baseline])
      )
    end)

    recent = Enum.take(Enum.reverse(fired) ++ state.recent, @keep_alerts)
    {fired, %{state | alerts: alerts, recent: recent}}
  end

  defp push(samples, count, sample) when count >= @keep,
    do: {:queue.in(sample, :queue.drop(samples)), count}

  defp push(samples, count, sample), do: {:queue.in(sample, samples), count + 1}

  defp peak({pool, m}, peaks) do
    now = Map.take(m, [:worker_arena_bytes, :held_bytes, :held_slices])
    Map.update(peaks, pool, now, &Map.merge(&1, now, fn _k, a, b -> max(a, b) end))
  end
end
