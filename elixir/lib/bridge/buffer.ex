defmodule Bridge.Buffer do
  @moduledoc """
  Bytes a Python handler receives as a read-only `memoryview` instead of `bytes`
  (protocol/SPEC.md §9, §10).

  A plain binary argument arrives as `bytes`, which Python copies out of the
  slice. Wrapping it in a `Bridge.Buffer` asks for a zero-copy view: at or
  above the threshold the handler reads the argument's slice in place, for as
  long as it keeps the view. The type is `memoryview` below the threshold too.

  ## Examples

      iex> Bridge.Buffer.new("abc")
      %Bridge.Buffer{data: "abc"}
  """

  @enforce_keys [:data]
  defstruct [:data]

  @type t :: %__MODULE__{data: binary()}

  @doc """
  Wraps `data` (a binary).

  ## Examples

      iex> Bridge.Buffer.new(<<1, 2, 3>>).data
      <<1, 2, 3>>
  """
  @spec new(binary()) :: t()
  def new(data) when is_binary(data), do: %__MODULE__{data: data}
end
