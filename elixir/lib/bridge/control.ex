defmodule Bridge.Control do
  @moduledoc false
  # The control channel of protocol/SPEC.md §8: a frame is
  #
  #   envelope_size :: u32 big-endian | envelope :: ETF | body :: ETF or nothing
  #
  # The envelope says what the frame is and is decoded by the worker's process;
  # the body (arguments, result) is encoded and decoded by the calling process,
  # so big terms never pass through the processes that route a call.
  #
  # Every decode here is `binary_to_term(_, [:safe])` after a size check
  # (SPEC §8.2): a worker cannot create atoms or funs on this node.

  alias Bridge.Error

  @max_frame 64 * 1024 * 1024
  # The control protocol this side implements; workers learn it from
  # BEAMBRIDGE_PROTOCOL (SPEC §8.4) and send nothing newer.
  @protocol_version "2.8"

  @doc false
  @spec protocol_version() :: String.t()
  def protocol_version, do: @protocol_version

  @doc false
  # Why a worker of protocol `major.minor` cannot work with this BEAM: a
  # different major (SPEC §8.4). Minors work together: each side sends the
  # other nothing newer than the other's minor.
  @spec other_major(integer(), integer()) :: String.t()
  def other_major(major, minor) do
    "it speaks protocol #{major}.#{minor} and this BEAM speaks #{@protocol_version}: " <>
      "different majors do not work together; install the same beambridge release " <>
      "for Python and for Elixir"
  end

  @doc false
  @spec max_frame() :: pos_integer()
  def max_frame, do: @max_frame

  @doc false
  # A frame as iodata: the envelope term, then the body (already ETF) if any.
  @spec frame(term(), iodata()) :: iodata()
  def frame(envelope, body \\ []) do
    env = :erlang.term_to_binary(envelope)
    [<<byte_size(env)::32>>, env | body]
  end

  @doc false
  # The call frame of §8.3; `body` is term_to_binary(args), made by the caller.
  @spec call_frame(pos_integer(), term(), term(), map(), list(), binary()) :: iodata()
  def call_frame(id, module, function, opts, slices, body),
    do: frame({:call, id, module, function, opts, slices}, body)

  @doc false
  # Splits a frame the worker sent: {:ok, envelope, body} (body a sub-binary,
  # "" when absent) or a :bad_frame error.
  @spec split(binary()) :: {:ok, term(), binary()} | {:error, Error.t()}
  def split(frame) when byte_size(frame) > @max_frame,
    do: {:error, bad_frame(:frame_too_large, byte_size(frame), @max_frame)}

  def split(<<size::32, env::binary-size(size), body::binary>>) do
    case safe(env) do
      {:ok, envelope} -> {:ok, envelope, body}
      :error -> {:error, bad_frame(:bad_term, size, "an envelope of safe ETF (SPEC §8.2)")}
    end
  end

  def split(frame),
    do:
      {:error,
       bad_frame(:bad_term, byte_size(frame), "envelope_size :: u32, then that many bytes")}

  @doc false
  # The body of an answer, decoded in the calling process. An unknown atom in a
  # well-formed body is the handler's mistake (:bad_call, :unknown_atom); anything
  # else that does not decode is a broken worker (:bad_frame).
  @spec decode_body(binary()) :: {:ok, term()} | {:error, Error.t()}
  def decode_body(body) do
    case safe(body) do
      {:ok, term} ->
        {:ok, term}

      :error ->
        case Bridge.ETF.classify(body) do
          {:unknown_atoms, names, _} -> {:error, unknown_atoms_error(names)}
          :malformed -> {:error, bad_frame(:bad_term, byte_size(body), "a body of safe ETF")}
        end
    end
  end

  # One whole term: bytes after it are as wrong as bytes missing.
  defp safe(bin) do
    case :erlang.binary_to_term(bin, [:safe, :used]) do
      {term, used} when used == byte_size(bin) -> {:ok, term}
      _ -> :error
    end
  rescue
    ArgumentError -> :error
  end

  defp unknown_atoms_error(names) do
    shown = Enum.map_join(names, ", ", &(":" <> &1))

    Error.new(:bad_call, :unknown_atom,
      field: :result,
      value: names,
      message:
        "bad call: the result names atoms that do not exist in this VM (#{shown}); " <>
          "return them as str (they arrive as binaries), or make sure the atoms exist " <>
          "on the BEAM before the call (the bridge never creates atoms for a peer)"
    )
  end

  defp bad_frame(reason, value, limit) do
    Error.new(:bad_frame, reason,
      field: :control_frame,
      value: value,
      limit: limit,
      message:
        "bad frame: #{reason}: a control frame from the worker broke the protocol " <>
          "(#{inspect(value)}; expected #{if is_binary(limit), do: limit, else: inspect(limit)})"
    )
  end
end
