defmodule Bridge.Arrow.Errors do
  @moduledoc false
  # The one place that builds the errors of Bridge.Arrow and of Bridge.Table.
  #
  # Stream errors (malformed or unsupported input to Bridge.Arrow.decode/2) are
  # kind :arrow; errors in values handed to Bridge.Table (lossy or ambiguous
  # input) are kind :bad_call, as for Bridge.Tensor. Inside Bridge.Arrow, errors are
  # thrown as {:bridge_arrow, error} and caught at the public boundary, so a deep
  # validation failure does not have to be threaded through every return value.

  alias Bridge.Error

  @doc false
  @spec stream(atom(), keyword()) :: Error.t()
  def stream(reason, opts \\ []), do: build(:arrow, reason, opts)

  @doc false
  @spec value(atom(), keyword()) :: Error.t()
  def value(reason, opts \\ []), do: build(:bad_call, reason, opts)

  @doc false
  @spec fail(atom(), keyword()) :: no_return()
  def fail(reason, opts \\ []), do: throw({:bridge_arrow, stream(reason, opts)})

  @doc false
  @spec fail_value(atom(), keyword()) :: no_return()
  def fail_value(reason, opts \\ []), do: throw({:bridge_arrow, value(reason, opts)})

  @doc false
  @spec throw_error(Error.t()) :: no_return()
  def throw_error(%Error{} = error), do: throw({:bridge_arrow, error})

  @doc """
  Runs `fun`, turning a thrown Arrow error into `{:error, error}`.
  """
  @spec catching((() -> {:ok, term()})) :: {:ok, term()} | {:error, Error.t()}
  def catching(fun) do
    fun.()
  catch
    {:bridge_arrow, %Error{} = error} -> {:error, error}
  end

  defp build(kind, reason, opts) do
    hint = Keyword.get(opts, :hint) || hint(reason)
    error = Error.new(kind, reason, Keyword.delete(opts, :hint))
    where = if at = Keyword.get(opts, :at), do: " at #{at}", else: ""

    message =
      case hint do
        nil -> error.message <> where
        hint -> error.message <> where <> " (" <> hint <> ")"
      end

    %{error | message: message}
  end

  defp hint(:truncated), do: "the stream ends inside a message; it was cut short or torn"
  defp hint(:bad_flatbuffer), do: "the message metadata is not a valid Arrow flatbuffer"
  defp hint(:buffer_out_of_bounds), do: "a buffer lies outside the message body"
  defp hint(:unsupported_type), do: "this Arrow type is not implemented by Bridge.Arrow"

  defp hint(:unsupported_compression),
    do:
      "write the stream uncompressed, with lz4 or with zstd (pyarrow: IpcWriteOptions(compression=\"lz4\"))"

  defp hint(:missing_schema), do: "an Arrow IPC stream starts with a Schema message"
  defp hint(:big_endian), do: "only little-endian Arrow data is supported"
  defp hint(:too_deep), do: "nested types deeper than the limit are refused"
  defp hint(_), do: nil
end
