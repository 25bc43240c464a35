defmodule Bridge.OwnedRegions do
  @moduledoc false
  # Names of regions this node created and has not closed or unlinked yet.
  # When :beambridge stops (a clean shutdown: System.stop/0, :init.stop/0,
  # Application.stop/1) the remaining names are unlinked, so a clean shutdown
  # leaves nothing in /dev/shm (SPEC §1.5) even for handles that were never
  # closed and not yet garbage-collected (resource destructors do not run at
  # VM exit). A name whose handle was collected has already been unlinked by
  # the destructor; unlinking it again is a harmless ENOENT (names carry our
  # pid, so nobody else can have reused it while we live).

  use GenServer

  @table __MODULE__

  def start_link(_opts), do: GenServer.start_link(__MODULE__, [], name: __MODULE__)

  def add(name) do
    if :ets.whereis(@table) != :undefined, do: :ets.insert(@table, {name})
    :ok
  rescue
    ArgumentError -> :ok
  end

  def remove(name) do
    if :ets.whereis(@table) != :undefined, do: :ets.delete(@table, name)
    :ok
  rescue
    ArgumentError -> :ok
  end

  @impl true
  def init([]) do
    Process.flag(:trap_exit, true)
    :ets.new(@table, [:named_table, :public, :set, write_concurrency: true])
    {:ok, nil}
  end

  @impl true
  def terminate(_reason, _state) do
    for {name} <- :ets.tab2list(@table), do: Bridge.NIF.unlink(name)
    :ok
  end
end
