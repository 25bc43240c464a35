# The Elixir half of the cross-language region tests (driven by test_cross_regions.py).
#
#   mix run tests/cross/peer.exs write SIZE...     create a region per size, write a frame,
#                                                  print "REGION <size> <name>", then "READY";
#                                                  wait for a line on stdin, close, print "CLOSED"
#   mix run tests/cross/peer.exs read SIZE:NAME...  attach, read + verify each frame, print
#                                                  "OK <size>" or "FAIL <size> <why>"
#   mix run tests/cross/peer.exs hold NAME          attach, read the frame and keep its zero-copy
#                                                  payload alive: print "HELD <bytes>"; on a stdin
#                                                  line check the bytes are unchanged, drop them,
#                                                  collect garbage, print "RELEASED <same?>";
#                                                  on a second line exit
#
# Payload byte i is rem(i, 251) (a prime period catches shifted or truncated copies);
# metadata is "size=<n>", schema_id is n, format is :tensor for odd sizes, :raw otherwise.
defmodule CrossPeer do
  alias Bridge.{Frame, Region}

  def pattern(0), do: <<>>

  def pattern(n),
    do:
      :binary.copy(:binary.list_to_bin(Enum.to_list(0..250)), div(n, 251) + 1)
      |> binary_part(0, n)

  def format(n) when rem(n, 2) == 1, do: :tensor
  def format(_n), do: :raw

  def main(["write" | sizes]) do
    regions =
      for s <- sizes do
        n = String.to_integer(s)
        region = Region.create_for_frame!(n, metadata_length: byte_size(meta(n)))

        Region.write_frame!(region, pattern(n),
          metadata: meta(n),
          format: format(n),
          schema_id: n,
          schema_version: 3
        )

        IO.puts("REGION #{n} #{region.name}")
        region
      end

    IO.puts("READY")
    _ = IO.gets("")
    Enum.each(regions, &Region.close!/1)
    IO.puts("CLOSED")
  end

  def main(["read" | pairs]) do
    for pair <- pairs do
      [s, name] = String.split(pair, ":", parts: 2)
      n = String.to_integer(s)
      IO.puts(check(n, name))
    end
  end

  def main(["hold", name]) do
    region = Region.attach!(name)
    holder = spawn_holder(region)
    send(holder, {:snapshot, self()})
    receive do: ({:snapshot, copy} -> IO.puts("HELD #{byte_size(copy)}"))
    _ = IO.gets("")
    send(holder, {:compare_and_exit, self()})
    same = receive do: ({:same, same} -> same)
    # The holder process has exited; its heap (and the last reference to the resource
    # binary) is gone, so the lease destructor has run once the refc reaches zero.
    :erlang.garbage_collect()
    IO.puts("RELEASED #{same}")
    _ = IO.gets("")
  end

  # Keeps the zero-copy payload in a process of its own so that letting go of it is
  # deterministic: the process exits and its binary references go with it.
  defp spawn_holder(region) do
    spawn(fn ->
      {:ok, %Frame{payload: payload}} = Region.read_frame(region, verify: true)
      hold(payload, :binary.copy(payload))
    end)
  end

  # `snapshot` is a private copy taken at read time; the zero-copy `payload` must still
  # equal it after the Python writer has tried to rewrite the region.
  defp hold(payload, snapshot) do
    receive do
      {:snapshot, from} ->
        send(from, {:snapshot, snapshot})
        hold(payload, snapshot)

      {:compare_and_exit, from} ->
        send(from, {:same, payload == snapshot})
    end
  end

  defp meta(n), do: "size=#{n}"

  defp check(n, name) do
    with {:ok, region} <- Region.attach(name),
         {:ok, %Frame{header: h, metadata: m, payload: p}} <-
           Region.read_frame(region, verify: true) do
      cond do
        Bridge.Header.format_name(h.format) != format(n) ->
          "FAIL #{n} format #{inspect(h.format)}"

        m != meta(n) ->
          "FAIL #{n} metadata #{inspect(m)}"

        h.schema_id != n or h.schema_version != 3 ->
          "FAIL #{n} schema #{h.schema_id}/#{h.schema_version}"

        byte_size(p) != n ->
          "FAIL #{n} length #{byte_size(p)}"

        p != pattern(n) ->
          "FAIL #{n} payload differs"

        true ->
          "OK #{n}"
      end
    else
      {:error, e} -> "FAIL #{n} #{Exception.message(e)}"
    end
  end
end

CrossPeer.main(System.argv())
