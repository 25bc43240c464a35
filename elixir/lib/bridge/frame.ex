defmodule Bridge.Frame do
  @moduledoc """
  A frame read from a slice or decoded from a binary (protocol/SPEC.md §5).

    * `header` — the validated `Bridge.Header`.
    * `metadata` — the metadata bytes, a private copy when read from a slice.
    * `payload` — the payload bytes. When read from a slice this is a zero-copy
      binary over the shared memory; the slice is not rewritten while it (or any
      sub-binary of it) is alive, because it holds the reader's lease (SPEC §4).
      Use `:binary.copy/1` to keep bytes without holding the lease.
  """

  @enforce_keys [:header, :metadata, :payload]
  defstruct [:header, :metadata, :payload]

  @type t :: %__MODULE__{header: Bridge.Header.t(), metadata: binary(), payload: binary()}
end
