defmodule Bridge.ResultRegions do
  @moduledoc false
  # One worker's attachments to the result regions its Python process owns
  # (SPEC §7.4): attached once, kept while the worker reuses them. The cache is
  # bounded: on a miss, entries whose name is gone from /dev/shm (the worker
  # dropped the region) are closed, and past @max entries the oldest go.
  # Closing an attachment never invalidates binaries already read from it: the
  # mapping lives until they are garbage-collected.

  alias Bridge.Region

  @max 64

  defstruct regions: %{}, order: []

  @type t :: %__MODULE__{regions: %{String.t() => Region.t()}, order: [String.t()]}

  @spec new() :: t()
  def new, do: %__MODULE__{}

  @spec attach(t(), String.t()) :: {:ok, Region.t(), t()} | {:error, Bridge.Error.t(), t()}
  def attach(%__MODULE__{regions: regions} = cache, name) do
    case regions do
      %{^name => region} ->
        {:ok, region, cache}

      _ ->
        cache = prune(cache)

        case Region.attach(name) do
          {:ok, region} ->
            {:ok, region,
             %{
               cache
               | regions: Map.put(cache.regions, name, region),
                 order: cache.order ++ [name]
             }}

          {:error, error} ->
            {:error, error, cache}
        end
    end
  end

  @spec close_all(t()) :: t()
  def close_all(%__MODULE__{regions: regions}) do
    Enum.each(regions, fn {_, region} -> Region.close(region) end)
    new()
  end

  @spec size(t()) :: non_neg_integer()
  def size(%__MODULE__{regions: regions}), do: map_size(regions)

  defp prune(%__MODULE__{} = cache) do
    {gone, kept} = Enum.split_with(cache.order, &(not File.exists?("/dev/shm" <> &1)))
    {old, kept} = Enum.split(kept, max(length(kept) - (@max - 1), 0))
    drop = gone ++ old
    Enum.each(drop, &Region.close(Map.fetch!(cache.regions, &1)))
    %{cache | regions: Map.drop(cache.regions, drop), order: kept}
  end
end
