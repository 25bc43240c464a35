defmodule Bridge.LeaseTable do
  @moduledoc """
  The lease table this node keeps for one worker process
  (protocol/SPEC.md §4): one 8-byte word per ticket, written only here
  (when a lease on the worker's slice ends), read by the worker through a
  read-only mapping to learn which of its slices it may reuse.

  ## Example

      iex> {:ok, table} = Bridge.LeaseTable.new(16)
      iex> {:object, :lease_table, _pid, _fd, _id, 4096, _nonce} = Bridge.LeaseTable.announcement(table)
      iex> Bridge.LeaseTable.word(table, 3)
      0
  """

  alias Bridge.{Error, NIF}

  @default_entries 65_536

  @typedoc "A lease table (NIF handle)."
  @type t :: reference()

  @doc "A new table of `entries` tickets (default 65,536)."
  @spec new(pos_integer()) :: {:ok, t()} | {:error, Error.t()}
  def new(entries \\ @default_entries) do
    case NIF.lease_table_new(entries) do
      {:ok, table} -> {:ok, table}
      {:error, reason} -> {:error, Error.new(:arena, reason, field: :entries, value: entries)}
    end
  end

  @doc "The table's announcement: `{:object, :lease_table, owner_pid, fd, id, size, nonce}`."
  @spec announcement(t()) :: tuple()
  def announcement(table) do
    {:ok, {id, fd, size, _entries, nonce}} = NIF.lease_table_info(table)
    {:object, :lease_table, Bridge.Arena.os_pid(), fd, id, size, nonce}
  end

  @doc "The generation last stored at `ticket` (0 if none)."
  @spec word(t(), non_neg_integer()) :: non_neg_integer()
  def word(table, ticket) do
    {:ok, value} = NIF.lease_table_word(table, ticket)
    value
  end
end
