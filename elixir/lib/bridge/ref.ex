defmodule Bridge.Ref do
  @moduledoc """
  A Python object a worker keeps for a session (`beambridge.keep(obj)`, protocol/SPEC.md
  §8.9). Pass it as an argument to a call of the same session and the handler gets the
  object. The worker drops the object when this struct is garbage-collected (every copy
  of it) or when the session ends.
  """

  @enforce_keys [:session, :id]
  defstruct [:session, :id, :watch]

  @type t :: %__MODULE__{session: pos_integer(), id: pos_integer(), watch: reference() | nil}

  @doc false
  # The ref of {:"$bb_ref", session, id} from `worker`, watched: the worker hears
  # when the BEAM lets go of it.
  @spec new(pos_integer(), pos_integer(), pid() | nil) :: t()
  def new(session, id, worker) when is_pid(worker),
    do: %__MODULE__{session: session, id: id, watch: Bridge.NIF.watch_new(worker, session, id)}

  def new(session, id, nil), do: %__MODULE__{session: session, id: id}

  defimpl Inspect do
    def inspect(ref, _opts), do: "#Bridge.Ref<session #{ref.session}, ref #{ref.id}>"
  end
end
