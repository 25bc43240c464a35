defmodule Bridge.Arrow.Array do
  @moduledoc """
  One Arrow array (a column chunk) in its physical layout: the buffers as
  binaries, exactly as they lie in an IPC message body.

    * `validity` — the validity bitmap (bit `i` of byte `div(i, 8)`, least
      significant first, set when slot `i` holds a value), or `nil` when there
      are no nulls
    * `offsets` — for variable-size, list and map types, `length + 1`
      little-endian offsets (32- or 64-bit); for a list view, `length`
      offsets; for a dense union, `length` 32-bit offsets into its children
    * `data` — the values: fixed-width values, a bit-packed bitmap for `:bool`,
      the bytes of all strings for variable-size types, the 16-byte views of a
      view type, the 8-bit type codes of a union, the indices for a
      dictionary; `nil` for `:null` and nested types
    * `sizes` — a list view's sizes (its `offsets` are the start of each list)
    * `variadic` — the data buffers a view type's views point into
    * `children` — the element array of a list type, the field arrays of a
      struct or union, the entries of a map, `[run_ends, values]` of a
      run-end encoded array
    * `dictionary` — the values array of a dictionary type; its `deltas` are
      the arrays delta dictionary batches appended to it, in order (indices
      count through the dictionary and then each delta)

  Arrays decoded by `Bridge.Arrow.decode/2` keep their buffers as sub-binaries
  of the input (zero-copy), trimmed to the bytes the array uses.

  ## Examples

      iex> {:ok, t} = Bridge.Table.from_columns(x: [1, nil, 3])
      iex> [a] = Bridge.Table.chunks(t, "x")
      iex> {a.type, a.length, a.null_count, a.validity, byte_size(a.data)}
      {{:s, 64}, 3, 1, <<5>>, 24}
  """

  alias Bridge.Arrow.Type

  @enforce_keys [:type, :length]
  defstruct [
    :type,
    :length,
    null_count: 0,
    validity: nil,
    offsets: nil,
    data: nil,
    sizes: nil,
    variadic: [],
    children: [],
    dictionary: nil,
    deltas: []
  ]

  @type t :: %__MODULE__{
          type: Type.t(),
          length: non_neg_integer(),
          null_count: non_neg_integer(),
          validity: binary() | nil,
          offsets: binary() | nil,
          data: binary() | nil,
          sizes: binary() | nil,
          variadic: [binary()],
          children: [t()],
          dictionary: t() | nil,
          deltas: [t()]
        }

  @doc """
  Whether slot `i` holds a value (is not null).

  ## Examples

      iex> a = %Bridge.Arrow.Array{type: :bool, length: 3, null_count: 1, validity: <<0b101>>, data: <<0b001>>}
      iex> Enum.map(0..2, &Bridge.Arrow.Array.valid?(a, &1))
      [true, false, true]
  """
  @spec valid?(t(), non_neg_integer()) :: boolean()
  def valid?(%__MODULE__{type: :null}, _i), do: false
  def valid?(%__MODULE__{validity: nil}, _i), do: true

  def valid?(%__MODULE__{validity: v}, i) do
    <<_::binary-size(div(i, 8)), byte, _::binary>> = v
    Bitwise.band(Bitwise.bsr(byte, rem(i, 8)), 1) == 1
  end

  @doc """
  The validity of the first `length` slots as a list of booleans.

  ## Examples

      iex> Bridge.Arrow.Array.bits(<<0b0000_0101, 1>>, 10)
      [true, false, true, false, false, false, false, false, true, false]
  """
  @spec bits(binary(), non_neg_integer()) :: [boolean()]
  def bits(bitmap, length), do: bits(bitmap, length, [])

  defp bits(_bitmap, 0, acc), do: Enum.reverse(acc)

  defp bits(<<b7::1, b6::1, b5::1, b4::1, b3::1, b2::1, b1::1, b0::1, rest::binary>>, n, acc)
       when n >= 8 do
    acc = [b7 == 1, b6 == 1, b5 == 1, b4 == 1, b3 == 1, b2 == 1, b1 == 1, b0 == 1 | acc]
    bits(rest, n - 8, acc)
  end

  defp bits(<<byte, _::binary>>, n, acc) do
    tail = for i <- (n - 1)..0//-1, do: Bitwise.band(Bitwise.bsr(byte, i), 1) == 1
    Enum.reverse(acc, Enum.reverse(tail))
  end

  @doc """
  Packs booleans into a bitmap, least significant bit first, padded with zero
  bits to a whole byte.

  ## Examples

      iex> Bridge.Arrow.Array.pack_bits([true, false, true, false, false, false, false, false, true])
      <<5, 1>>
  """
  @spec pack_bits([boolean()]) :: binary()
  def pack_bits(bools), do: pack_bits(bools, [])

  defp pack_bits([b0, b1, b2, b3, b4, b5, b6, b7 | rest], acc) do
    byte =
      <<bit(b7)::1, bit(b6)::1, bit(b5)::1, bit(b4)::1, bit(b3)::1, bit(b2)::1, bit(b1)::1,
        bit(b0)::1>>

    pack_bits(rest, [acc | byte])
  end

  defp pack_bits([], acc), do: IO.iodata_to_binary(acc)
  defp pack_bits(tail, acc), do: pack_bits(tail ++ List.duplicate(false, 8 - length(tail)), acc)

  defp bit(true), do: 1
  defp bit(_), do: 0
end
