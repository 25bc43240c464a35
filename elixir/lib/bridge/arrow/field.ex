defmodule Bridge.Arrow.Field do
  @moduledoc """
  One field of an Arrow schema: a name, a type (see `Bridge.Arrow.Type`),
  whether it may hold nulls, and its custom metadata as `{key, value}` pairs of
  binaries. A list type's element is a field too (pyarrow names it `"item"`).

  ## Examples

      iex> Bridge.Arrow.Field.new("id", {:s, 64}, nullable: false)
      %Bridge.Arrow.Field{name: "id", type: {:s, 64}, nullable: false, metadata: []}
  """

  alias Bridge.Arrow.Type

  @enforce_keys [:name, :type]
  defstruct [:name, :type, nullable: true, metadata: []]

  @type t :: %__MODULE__{
          name: String.t(),
          type: Type.t(),
          nullable: boolean(),
          metadata: [{binary(), binary()}]
        }

  @doc """
  Builds a field. Options: `:nullable` (default `true`), `:metadata` (default `[]`).
  """
  @spec new(String.t(), Type.t(), keyword()) :: t()
  def new(name, type, opts \\ []) when is_binary(name) do
    %__MODULE__{
      name: name,
      type: type,
      nullable: Keyword.get(opts, :nullable, true),
      metadata: Keyword.get(opts, :metadata, [])
    }
  end
end
