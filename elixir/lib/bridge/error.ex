defmodule Bridge.Error do
  @moduledoc """
  The one error type of beambridge (protocol/SPEC.md §7).

  Every failure a caller can meet is returned as `{:error, %Bridge.Error{}}`;
  the bang variants raise the same struct.

    * `kind` — the category: `:bad_frame` (header and payload validation, SPEC §6,
      and control frames that break SPEC §8), `:nif` (an error the NIF returned
      outside shared objects, `from_nif/2`), `:lease` (leases, SPEC §4) or `:arena` (shared
      objects: limits, sealing, opening a peer's object); for `Bridge.call/3`
      also `:python_exception` (the handler raised), `:timeout`, `:worker_died`,
      `:overloaded` (the pool's queue is full), `:node_down` (the node a call
      went to died or stopped answering, SPEC §15), `:bad_call` (the call itself was
      wrong: unknown module or function, arguments that cannot cross) and
      `:start_failed` (the interpreter could not start a worker).
    * `reason` — an atom, the same word the Python side uses (`:bad_magic`,
      `:no_space`, `:stale_generation`, …). OS errors without a protocol name are the
      lowercase errno name (`:eacces`).
    * `field` — the header, object or argument field at fault, or `nil`.
    * `value` — the offending value, or `nil`.
    * `limit` — the bound it broke, or `nil`.
    * `python_type` — for `:python_exception`, the exception's qualified class
      name (`"ValueError"`, `"mymod.MyError"`); otherwise `nil`.
    * `traceback` — for `:python_exception`, Python's formatted traceback;
      otherwise `nil`.
    * `checkpoint` — for an error that ended a `Bridge.stream/3`, where the
      stream can be resumed from (`Bridge.Stream.Checkpoint`, `resume:`);
      otherwise `nil`.
  """

  @type kind ::
          :bad_frame
          | :nif
          | :lease
          | :python_exception
          | :timeout
          | :worker_died
          | :overloaded
          | :node_down
          | :bad_call
          | :start_failed
          | :arrow
          | :arena
  @type t :: %__MODULE__{
          kind: kind(),
          reason: atom(),
          field: atom() | nil,
          value: term(),
          limit: term(),
          message: String.t() | nil,
          python_type: String.t() | nil,
          traceback: String.t() | nil,
          checkpoint: Bridge.Stream.Checkpoint.t() | nil
        }

  defexception [
    :kind,
    :reason,
    :field,
    :value,
    :limit,
    :message,
    :python_type,
    :traceback,
    :checkpoint
  ]

  @doc """
  Builds an error and fills in its message.

  ## Examples

      iex> e = Bridge.Error.new(:bad_frame, :bad_magic, field: :magic, value: "XXXX", limit: "BBFH")
      iex> {e.kind, e.reason, e.field}
      {:bad_frame, :bad_magic, :magic}
      iex> e.message
      ~s[bad frame: bad_magic: field magic is "XXXX", expected "BBFH" (not a beambridge frame header)]
  """
  @spec new(kind(), atom(), keyword()) :: t()
  def new(kind, reason, opts \\ []) do
    error = %__MODULE__{
      kind: kind,
      reason: reason,
      field: Keyword.get(opts, :field),
      value: Keyword.get(opts, :value),
      limit: Keyword.get(opts, :limit),
      python_type: Keyword.get(opts, :python_type),
      traceback: Keyword.get(opts, :traceback)
    }

    %{error | message: Keyword.get(opts, :message) || build_message(error)}
  end

  @impl true
  def exception(opts) when is_list(opts) do
    new(Keyword.fetch!(opts, :kind), Keyword.fetch!(opts, :reason), opts)
  end

  @doc """
  The human-readable message: names the field and the values, and says what to
  do where there is something to do.

  ## Examples

      iex> Bridge.Error.message(Bridge.Error.new(:arena, :slice_out_of_bounds, field: :offset, value: 8192, limit: 4096))
      "arena error: slice_out_of_bounds: field offset is 8192, limit 4096 (the handle names bytes outside the peer's object)"
  """
  @spec message(t()) :: String.t()
  @impl true
  def message(%__MODULE__{message: message}) when is_binary(message), do: message
  def message(%__MODULE__{} = error), do: build_message(error)

  @doc """
  The error for an exception a Python handler raised: `type` is the qualified
  class name, `traceback` Python's formatted traceback. The message names the
  type and the message and ends with the traceback.

  ## Examples

      iex> e = Bridge.Error.python_exception("ValueError", "bad input", "Traceback ...")
      iex> {e.kind, e.reason, e.python_type}
      {:python_exception, :python_exception, "ValueError"}
      iex> e.message
      "python exception: ValueError: bad input\\nTraceback ..."
  """
  @spec python_exception(String.t(), String.t(), String.t()) :: t()
  def python_exception(type, message, traceback) do
    %__MODULE__{
      kind: :python_exception,
      reason: :python_exception,
      python_type: type,
      traceback: traceback,
      message: String.trim_trailing("python exception: #{type}: #{message}\n#{traceback}")
    }
  end

  @doc """
  Turns an error atom returned by the NIF into a `:nif` error, mapping OS
  errors to protocol reasons. This is the one place where that mapping lives.

  ## Examples

      iex> Bridge.Error.from_nif(:enospc, field: :size, value: 8).reason
      :no_space
      iex> Bridge.Error.from_nif(:enoent).reason
      :not_found
      iex> Bridge.Error.from_nif(:eacces).reason
      :eacces
  """
  @spec from_nif(atom(), keyword()) :: t()
  def from_nif(reason, opts \\ []) when is_atom(reason) do
    new(:nif, nif_reason(reason), opts)
  end

  defp nif_reason(:enospc), do: :no_space
  defp nif_reason(:enoent), do: :not_found
  defp nif_reason(:enametoolong), do: :bad_name
  defp nif_reason(other), do: other

  defp build_message(%__MODULE__{} = e) do
    head = "#{kind_text(e.kind)}: #{e.reason}"

    detail =
      case {e.field, e.value, e.limit} do
        {nil, nil, nil} ->
          ""

        {field, value, nil} ->
          ": field #{field} is #{inspect(value)}"

        {field, value, limit} ->
          ": field #{field} is #{inspect(value)}, #{limit_text(e.reason, limit)}"
      end

    case hint(e.reason) do
      nil -> head <> detail
      hint -> head <> detail <> " (" <> hint <> ")"
    end
  end

  defp kind_text(:bad_frame), do: "bad frame"
  defp kind_text(:nif), do: "NIF error"
  defp kind_text(:lease), do: "lease error"
  defp kind_text(:python_exception), do: "python exception"
  defp kind_text(:timeout), do: "timeout"
  defp kind_text(:worker_died), do: "worker died"
  defp kind_text(:overloaded), do: "overloaded"
  defp kind_text(:node_down), do: "node down"
  defp kind_text(:bad_call), do: "bad call"
  defp kind_text(:start_failed), do: "worker start failed"
  defp kind_text(:arena), do: "arena error"
  defp kind_text(other), do: "#{other} error"

  @exact [
    :bad_magic,
    :unsupported_version,
    :bad_header_size,
    :bad_decoded_length,
    :header_checksum_mismatch,
    :checksum_mismatch,
    :stale_generation,
    :leased,
    :misaligned_payload
  ]

  defp limit_text(reason, limit) when reason in @exact, do: "expected #{inspect(limit)}"
  defp limit_text(_reason, limit) when is_binary(limit), do: "expected #{limit}"
  defp limit_text(:payload_overlaps_metadata, limit), do: "must be at least #{inspect(limit)}"
  defp limit_text(_reason, limit), do: "limit #{inspect(limit)}"

  defp hint(:bad_magic), do: "not a beambridge frame header"
  defp hint(:unsupported_version), do: "the peer speaks another major version of the protocol"

  defp hint(:header_checksum_mismatch),
    do: "the header or metadata was modified or torn; re-read after the writer publishes"

  defp hint(:checksum_mismatch),
    do: "the payload was modified outside the lease protocol; re-read or copy the data"

  defp hint(:stale_generation), do: "the frame was rewritten while being read; read it again"
  defp hint(:unknown_flags), do: "the frame needs a newer reader"
  defp hint(:unknown_format), do: "the frame needs a newer reader"
  defp hint(:unknown_codec), do: "the frame needs a newer reader"
  defp hint(:decoded_too_large), do: "raise :max_decoded_length if this size is expected"

  defp hint(:leased),
    do:
      "a reader still holds a lease on this slice; drop the binaries and views made from it first"

  defp hint(:no_space),
    do:
      "too little memory is left in the machine or the cgroup; lower :arena_limit or free memory"

  defp hint(:not_found), do: "no arena of that id; its owner may have dropped it"
  defp hint(:closed), do: "the arena set or the peer object was closed"

  defp hint(:bad_name),
    do: "not a /dev/shm name beambridge made (/<prefix>-<pid>-<16 hex digits>)"

  defp hint(:not_sealed),
    do: "the peer's object is not sealed against resizing (or writing); refused to map it"

  defp hint(:bad_object), do: "the object's header does not match its announcement"
  defp hint(:slice_out_of_bounds), do: "the handle names bytes outside the peer's object"
  defp hint(_), do: nil
end
