defmodule Bridge.Application do
  @moduledoc false
  # Starts :beambridge. At start it removes the shared-memory names earlier
  # versions left behind when their owner was killed (Bridge.Reaper; transport v2
  # names nothing) and logs what it removed. Bridge.FormatStats owns the table of
  # format decisions (Bridge.format_stats/0) shared by every bridge; the
  # application's process owns the table of stored metas (Bridge.Provenance.Stored)
  # and that of the calls' metrics (Bridge.Metrics), which collectors, one per
  # scheduler, record calls into.

  use Application

  require Logger

  @impl true
  def start(_type, _args) do
    case Bridge.Reaper.reap() do
      [] ->
        :ok

      removed ->
        Logger.info(
          "beambridge: removed #{length(removed)} stale shared-memory name(s) left by " <>
            "dead processes: #{Enum.join(removed, ", ")}"
        )
    end

    Bridge.Pids.init()
    Bridge.Provenance.Stored.init()
    Bridge.Metrics.init()

    children =
      [Bridge.FormatStats, Bridge.Metrics.Monitor | Bridge.Metrics.Collector.children()] ++
        [Bridge.Handle | Bridge.Cluster.children()]

    Supervisor.start_link(children, strategy: :one_for_one, name: Bridge.Supervisor)
  end
end
