defmodule Bridge.ControlBlock do
  @moduledoc false
  # The 64-byte control block at the start of every region (SPEC §2):
  # offsets of its words, encoding at creation, validation (§2.1) and the
  # owner start time from /proc/<pid>/stat (§1.5).

  alias Bridge.Error

  @size 64
  @magic "BBCB"
  @layout_version 1

  def size, do: @size

  # Word offsets (SPEC §2).
  def writer_state_off, do: 32
  def reader_leases_off, do: 36
  def writer_generation_off, do: 40

  # writer_state values.
  def empty, do: 0
  def writing, do: 1
  def published, do: 2

  @doc false
  def encode(owner_pid, owner_start_time, region_size) do
    <<@magic::binary, @layout_version::little-16, @size::little-16, owner_pid::little-32,
      0::little-32, owner_start_time::little-64, region_size::little-64, 0::little-32,
      0::little-32, 0::little-64, 0::size(16)-unit(8)>>
  end

  # SPEC §2.1: returns {:ok, map} or {:error, %Bridge.Error{reason: :bad_control_block}}.
  @doc false
  def validate(
        <<magic::binary-size(4), layout_version::little-16, cb_size::little-16,
          owner_pid::little-32, _reserved::little-32, owner_start_time::little-64,
          region_size::little-64, _rest::binary-size(32)>>,
        real_size
      ) do
    cond do
      magic != @magic -> bad(:cb_magic, magic, @magic)
      layout_version != @layout_version -> bad(:layout_version, layout_version, @layout_version)
      cb_size != @size -> bad(:cb_size, cb_size, @size)
      region_size != real_size -> bad(:region_size, region_size, real_size)
      true -> {:ok, %{owner_pid: owner_pid, owner_start_time: owner_start_time}}
    end
  end

  def validate(other, _real_size) when is_binary(other),
    do: bad(:control_block, byte_size(other), @size)

  defp bad(field, value, limit),
    do: {:error, Error.new(:region, :bad_control_block, field: field, value: value, limit: limit)}

  # Field 22 of /proc/<pid>/stat (clock ticks since boot), or nil.
  @doc false
  def start_time(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} -> parse_start_time(stat)
      {:error, _} -> nil
    end
  end

  @doc false
  def parse_start_time(stat) when is_binary(stat) do
    # "pid (comm) state ppid ..." — comm may contain spaces and ")", so split
    # after the last ") ".
    with [_ | _] = matches <- :binary.matches(stat, ") "),
         {pos, len} = List.last(matches),
         after_comm = binary_part(stat, pos + len, byte_size(stat) - pos - len),
         field when is_binary(field) <- Enum.at(String.split(after_comm, " "), 22 - 3),
         {n, ""} <- Integer.parse(field) do
      n
    else
      _ -> nil
    end
  end

  # Our own start time, read once.
  @doc false
  def own_start_time do
    case :persistent_term.get({__MODULE__, :own_start_time}, :unset) do
      :unset ->
        t = start_time(System.pid()) || 0
        :persistent_term.put({__MODULE__, :own_start_time}, t)
        t

      t ->
        t
    end
  end
end
