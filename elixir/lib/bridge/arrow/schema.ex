defmodule Bridge.Arrow.Schema do
  @moduledoc """
  An Arrow schema: the fields of a table, in column order, and the schema's
  custom metadata as `{key, value}` pairs of binaries.

  ## Examples

      iex> s = Bridge.Arrow.Schema.new([Bridge.Arrow.Field.new("x", :utf8)])
      iex> Bridge.Arrow.Schema.names(s)
      ["x"]
  """

  alias Bridge.Arrow.Field

  defstruct fields: [], metadata: []

  @type t :: %__MODULE__{fields: [Field.t()], metadata: [{binary(), binary()}]}

  @doc "Builds a schema from fields. Option: `:metadata` (default `[]`)."
  @spec new([Field.t()], keyword()) :: t()
  def new(fields, opts \\ []) when is_list(fields) do
    %__MODULE__{fields: fields, metadata: Keyword.get(opts, :metadata, [])}
  end

  @doc "The column names, in order."
  @spec names(t()) :: [String.t()]
  def names(%__MODULE__{fields: fields}), do: Enum.map(fields, & &1.name)
end
