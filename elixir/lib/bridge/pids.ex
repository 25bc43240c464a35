defmodule Bridge.Pids do
  @moduledoc false
  # Pids in data (protocol/SPEC.md §9, {:"$bb_pid", etf, mac}). A pid goes to
  # Python as its term_to_binary and an HMAC-SHA256 over it with a secret this
  # node made at start; a pid comes back only with a MAC of this node's secret,
  # so a worker can return or send to a pid it was given but cannot make one
  # (and so cannot send to a process nobody showed it).

  @key {__MODULE__, :secret}

  @doc false
  # The node's secret: made once, when the application starts.
  @spec init() :: :ok
  def init do
    if :persistent_term.get(@key, nil) == nil,
      do: :persistent_term.put(@key, :crypto.strong_rand_bytes(32))

    :ok
  end

  @doc false
  # The wire form of a pid.
  @spec wire(pid()) :: {atom(), binary(), binary()}
  def wire(pid) when is_pid(pid) do
    etf = :erlang.term_to_binary(pid)
    {:"$bb_pid", etf, mac(etf)}
  end

  @doc false
  # The pid of a wire form, or :error when its MAC is not this node's or it
  # holds no pid.
  @spec from_wire(binary(), binary()) :: {:ok, pid()} | :error
  def from_wire(etf, tag) when is_binary(etf) and byte_size(tag) == 32 do
    with true <- :crypto.hash_equals(mac(etf), tag),
         pid when is_pid(pid) <- safe(etf) do
      {:ok, pid}
    else
      _ -> :error
    end
  end

  def from_wire(_etf, _tag), do: :error

  defp mac(etf), do: :crypto.mac(:hmac, :sha256, :persistent_term.get(@key), etf)

  defp safe(etf) do
    :erlang.binary_to_term(etf, [:safe])
  rescue
    ArgumentError -> :error
  end
end
