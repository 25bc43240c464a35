defmodule Bridge.Provenance.Stored do
  @moduledoc false
  # The stored meta bodies this node has read (protocol/SPEC.md §5.4): a frame
  # with flag HOLDS_META holds its call's meta for the frames after it, which
  # name it by meta_ref {digest, length}. Kept in a public ETS table owned by
  # the application, at most @max bodies: past that the table starts again
  # (a body that is no longer here is reported as not found, never guessed).

  alias Bridge.{NIF, Provenance}

  @table __MODULE__
  @max 64

  @doc false
  # Called once, by the application at start.
  @spec init() :: :ok
  def init do
    if :ets.whereis(@table) == :undefined,
      do: :ets.new(@table, [:set, :public, :named_table, read_concurrency: true])

    :ok
  end

  @doc false
  # Keeps the stored meta of a block read from a frame with HOLDS_META.
  @spec remember(Provenance.t()) :: :ok
  def remember(%Provenance{meta: meta} = p) do
    with true <- Provenance.stored?(p),
         true <- :ets.whereis(@table) != :undefined,
         {:ok, digest} <- NIF.xxh3_64(meta) do
      if :ets.info(@table, :size) >= @max, do: :ets.delete_all_objects(@table)
      :ets.insert(@table, {{digest, byte_size(meta)}, meta})
    end

    :ok
  end

  @doc false
  @spec lookup(non_neg_integer(), non_neg_integer()) :: binary() | nil
  def lookup(digest, len) do
    case :ets.whereis(@table) != :undefined and :ets.lookup(@table, {digest, len}) do
      [{_, meta}] -> meta
      _ -> nil
    end
  end
end
