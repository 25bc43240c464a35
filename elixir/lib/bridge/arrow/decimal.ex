defmodule Bridge.Arrow.Decimal do
  @moduledoc """
  An exact decimal number from an Arrow decimal column: `coefficient × 10^-scale`.

  Decimal columns (`{:decimal, bits, precision, scale}`) come out of
  `Bridge.Table` as these structs, with the column's scale, never as floats.
  Building a decimal column accepts these, integers, and the structs of the
  `decimal` package (`%Decimal{sign, coef, exp}`), as long as the value fits
  the column's precision and scale exactly.

  ## Examples

      iex> d = Bridge.Arrow.Decimal.new(-1234, 2)
      iex> to_string(d)
      "-12.34"
      iex> Bridge.Arrow.Decimal.parse("3.140")
      {:ok, %Bridge.Arrow.Decimal{coefficient: 3140, scale: 3}}
      iex> Bridge.Arrow.Decimal.rescale(Bridge.Arrow.Decimal.new(15, 1), 3)
      {:ok, %Bridge.Arrow.Decimal{coefficient: 1500, scale: 3}}
      iex> Bridge.Arrow.Decimal.rescale(Bridge.Arrow.Decimal.new(15, 1), 0)
      :error
  """

  @enforce_keys [:coefficient, :scale]
  defstruct [:coefficient, :scale]

  @type t :: %__MODULE__{coefficient: integer(), scale: integer()}

  @doc "The decimal `coefficient × 10^-scale`."
  @spec new(integer(), integer()) :: t()
  def new(coefficient, scale) when is_integer(coefficient) and is_integer(scale),
    do: %__MODULE__{coefficient: coefficient, scale: scale}

  @doc """
  The same number with another scale, when that is exact; `:error` when the
  number has non-zero digits past the new scale.
  """
  @spec rescale(t(), integer()) :: {:ok, t()} | :error
  def rescale(%__MODULE__{coefficient: c, scale: s}, scale) when scale >= s,
    do: {:ok, new(c * pow10(scale - s), scale)}

  def rescale(%__MODULE__{coefficient: c, scale: s}, scale) do
    p = pow10(s - scale)
    if rem(c, p) == 0, do: {:ok, new(div(c, p), scale)}, else: :error
  end

  @doc "Parses a plain decimal string (`-12.340`), keeping its digits as the scale."
  @spec parse(String.t()) :: {:ok, t()} | :error
  def parse(string) when is_binary(string) do
    case Regex.run(~r/\A([+-]?)(\d+)(?:\.(\d*))?\z/, string) do
      [_, sign, int | frac] ->
        frac = List.first(frac) || ""
        c = String.to_integer(int <> frac)
        {:ok, new(if(sign == "-", do: -c, else: c), byte_size(frac))}

      nil ->
        :error
    end
  end

  @doc false
  @spec pow10(non_neg_integer()) :: pos_integer()
  def pow10(n), do: Integer.pow(10, n)

  defimpl String.Chars do
    def to_string(%{coefficient: c, scale: s}) when s <= 0,
      do: Integer.to_string(c * Bridge.Arrow.Decimal.pow10(-s))

    def to_string(%{coefficient: c, scale: s}) do
      digits = c |> abs() |> Integer.to_string() |> String.pad_leading(s + 1, "0")
      {int, frac} = String.split_at(digits, byte_size(digits) - s)
      if(c < 0, do: "-", else: "") <> int <> "." <> frac
    end
  end

  defimpl Inspect do
    def inspect(d, _opts), do: "Bridge.Arrow.Decimal.new(#{d.coefficient}, #{d.scale})"
  end
end
