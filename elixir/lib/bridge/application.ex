defmodule Bridge.Application do
  @moduledoc false
  # Starts :beambridge. At start it reaps regions of the default prefix whose
  # owner is dead (SPEC §1.5) and logs what it removed; Bridge.OwnedRegions
  # unlinks what is still ours when it stops. Bridge.FormatStats owns the table
  # of format decisions (Bridge.format_stats/0) shared by every bridge.

  use Application

  require Logger

  @impl true
  def start(_type, _args) do
    reap()

    Supervisor.start_link([Bridge.FormatStats, Bridge.OwnedRegions],
      strategy: :one_for_one,
      name: Bridge.Supervisor
    )
  end

  defp reap do
    case Bridge.Region.reap_stale(prefix: Bridge.Region.default_prefix()) do
      {:ok, []} ->
        :ok

      {:ok, removed} ->
        Logger.info(
          "beambridge: removed #{length(removed)} stale region(s): #{Enum.join(removed, ", ")}"
        )

      {:error, error} ->
        Logger.warning("beambridge: reaping stale regions failed: #{Exception.message(error)}")
    end
  end
end
