defmodule Bridge.RegionTest do
  use ExUnit.Case, async: true

  import Bitwise
  alias Bridge.{ControlBlock, Error, Frame, NIF, Region}
  alias Bridge.Test.Shm

  doctest Bridge.Region

  @prefix "bbtregion"

  defp create_for!(payload_length, opts \\ []) do
    region = Region.create_for_frame!(payload_length, Keyword.put(opts, :prefix, @prefix))
    on_exit(fn -> Region.close(region) end)
    region
  end

  defp leases(region) do
    {:ok, n} = NIF.load_u32(region.ref, ControlBlock.reader_leases_off())
    n
  end

  test "create fills the control block and makes a 0600 regular file named per SPEC §1.1" do
    region = create_for!(100)
    pid = System.pid()
    assert region.name =~ ~r"\A/bbtregion-#{pid}-[0-9a-f]{16}\z"
    assert region.owner?

    stat = File.stat!("/dev/shm" <> region.name)
    assert stat.type == :regular
    assert (stat.mode &&& 0o777) == 0o600
    assert stat.size == region.size

    assert {:ok, cb} = NIF.read_copy(region.ref, 0, 64)

    assert {:ok, %{owner_pid: owner_pid, owner_start_time: start}} =
             ControlBlock.validate(cb, region.size)

    assert Integer.to_string(owner_pid) == pid
    assert start == ControlBlock.start_time(pid) and start > 0

    assert <<"BBCB", 1::little-16, 64::little-16, _::binary-size(8), _::binary-size(8),
             size::little-64, 0::little-32, 0::little-32, 0::little-64, 0::size(16)-unit(8)>> = cb

    assert size == region.size
  end

  test "create validates its arguments" do
    assert {:error, %Error{kind: :region, reason: :bad_name, field: :prefix}} =
             Region.create(4096, prefix: "Bad-Prefix")

    assert {:error, %Error{reason: :bad_name}} = Region.create(4096, prefix: "")

    assert {:error, %Error{reason: :bad_name}} =
             Region.create(4096, prefix: String.duplicate("a", 17))

    assert {:error, %Error{reason: :region_too_small, value: 191}} = Region.create(191)
    assert {:error, %Error{reason: :region_too_large}} = Region.create((1 <<< 48) + 1)
    assert {:error, %Error{reason: :badarg, field: :size}} = Region.create("big")
    assert {:error, %Error{reason: :badarg, field: :opts}} = Region.create(4096, [:x])
    assert_raise Error, ~r/region_too_small/, fn -> Region.create!(10) end
  end

  test "write then read round trip, generations count up" do
    region = create_for!(1000, metadata_length: 20)

    Enum.each(1..3, fn g ->
      # The previous iteration's payload binary is garbage now; collect it so
      # its lease ends (a lease lives as long as the binary, SPEC §2.2).
      wait_until(fn -> leases(region) == 0 end)
      payload = :crypto.strong_rand_bytes(1000)
      metadata = :crypto.strong_rand_bytes(20)

      assert {:ok, h} =
               Region.write_frame(region, payload,
                 metadata: metadata,
                 format: :tensor,
                 schema_id: 9,
                 schema_version: 2
               )

      assert h.generation == g

      assert {:ok, %Frame{header: ^h, metadata: ^metadata, payload: ^payload}} =
               Region.read_frame(region)
    end)
  end

  test "a payload above the dirty threshold round trips (dirty copy and hash paths)" do
    payload = :crypto.strong_rand_bytes(3 * 1024 * 1024 + 7)
    region = create_for!(byte_size(payload))
    assert {:ok, _} = Region.write_frame(region, payload)
    assert {:ok, %Frame{payload: ^payload}} = Region.read_frame(region)
  end

  test "an iodata payload is written part by part, with the checksum of the whole" do
    big = :crypto.strong_rand_bytes(2 * 1024 * 1024)
    iodata = ["ab", [?c, big], <<>>, [[<<1, 2, 3>>]], big]
    payload = IO.iodata_to_binary(iodata)
    region = create_for!(byte_size(payload), metadata_length: 4)

    for checksum <- [true, false] do
      wait_until(fn -> leases(region) == 0 end)
      assert {:ok, h} = Region.write_frame(region, iodata, checksum: checksum, metadata: "meta")
      assert h.payload_length == byte_size(payload)
      {:ok, expected} = Bridge.NIF.xxh3_64(payload)
      assert h.payload_checksum == if(checksum, do: expected, else: 0)
      # verify: true recomputes the checksum over what is in the region
      assert {:ok, %Frame{header: ^h, payload: ^payload}} =
               Region.read_frame(region, verify: true)
    end

    # the same validation as a binary payload; nothing is written on failure
    wait_until(fn -> leases(region) == 0 end)

    assert {:error, %Bridge.Error{reason: :out_of_bounds}} =
             Region.write_frame(region, [payload, "x"], metadata: "meta")

    assert {:error, %Bridge.Error{reason: :badarg}} = Region.write_frame(region, ["ok", :atom])
    assert {:error, %Bridge.Error{reason: :badarg}} = Region.write_frame(region, [256])
    assert {:ok, %Frame{payload: ^payload}} = Region.read_frame(region)
  end

  test "the payload is a zero-copy binary over the region's mapping" do
    region = create_for!(4096, metadata_length: 10)
    Region.write_frame!(region, :binary.copy("z", 4096), metadata: "0123456789")
    {:ok, frame} = Region.read_frame(region)

    {:ok, base} = NIF.address(region.ref)
    {:ok, addr} = NIF.binary_address(frame.payload)
    assert addr == base + 64 + frame.header.payload_offset
    assert addr >= base and addr + byte_size(frame.payload) <= base + region.size
    assert rem(addr, 64) == 0

    # The metadata and header are private copies, not views of the region.
    {:ok, meta_addr} = NIF.binary_address(frame.metadata)
    refute meta_addr >= base and meta_addr < base + region.size
  end

  test "invariant 1: no write while a payload binary lives; the write succeeds once it is collected" do
    region = create_for!(64)
    first = :binary.copy("a", 64)
    Region.write_frame!(region, first)
    parent = self()

    {reader, monitor} =
      spawn_monitor(fn ->
        {:ok, frame} = Region.read_frame(region)
        # Keep only a sub-binary: it holds the lease too.
        held = binary_part(frame.payload, 8, 16)
        send(parent, :holding)

        receive do
          :check -> send(parent, {:held, :binary.copy(held)})
        end

        receive do
          :drop -> :ok
        end
      end)

    assert_receive :holding
    assert leases(region) == 1

    assert {:error, %Error{kind: :lease, reason: :leased, field: :reader_leases, value: 1}} =
             Region.write_frame(region, :binary.copy("b", 64))

    # The refused writer changed nothing the reader can see.
    send(reader, :check)
    assert_receive {:held, held}
    assert held == binary_part(first, 8, 16)
    assert {:ok, %Frame{payload: ^first}} = Region.read_frame(region)

    send(reader, :drop)
    assert_receive {:DOWN, ^monitor, :process, ^reader, :normal}
    :erlang.garbage_collect()
    wait_until(fn -> leases(region) == 0 end)

    assert {:ok, %{generation: 2}} = Region.write_frame(region, :binary.copy("b", 64))
    assert Region.read_frame!(region).payload == :binary.copy("b", 64)
  end

  test "a failed read gives its lease back at once" do
    region = create_for!(16)
    Region.write_frame!(region, "0123456789abcdef")
    {:ok, gen} = NIF.load_u64(region.ref, 40)
    :ok = NIF.store_u64(region.ref, 40, gen + 1)

    assert {:error,
            %Error{
              kind: :bad_frame,
              reason: :stale_generation,
              field: :generation,
              value: 1,
              limit: 2
            }} = Region.read_frame(region)

    assert leases(region) == 0
    assert {:ok, _} = Region.write_frame(region, "x")
  end

  test "payload checksum: corrupted bytes are checksum_mismatch unless verify: false" do
    region = create_for!(8)
    h = Region.write_frame!(region, "abcdefgh")
    :ok = NIF.write(region.ref, 64 + h.payload_offset, "X")

    assert {:error, %Error{reason: :checksum_mismatch, field: :payload_checksum}} =
             Region.read_frame(region)

    assert leases(region) == 0
    assert {:ok, %Frame{payload: "Xbcdefgh"}} = Region.read_frame(region, verify: false)
    assert {:error, %Error{reason: :badarg, field: :opts}} = Region.read_frame(region, verify: 1)
  end

  test "a corrupted header in the region is a typed error and releases the lease" do
    region = create_for!(8)
    Region.write_frame!(region, "abcdefgh")
    # metadata_length far beyond the region
    :ok = NIF.write(region.ref, 64 + 36, <<0xFFFFFFF0::little-32>>)

    assert {:error, %Error{reason: :metadata_too_large, field: :metadata_length}} =
             Region.read_frame(region)

    :ok = NIF.write(region.ref, 64 + 36, <<1000::little-32>>)

    assert {:error, %Error{reason: :metadata_out_of_bounds, field: :metadata_length}} =
             Region.read_frame(region)

    assert leases(region) == 0
  end

  test "lease protocol states: not_published, busy writer, empty payloads" do
    region = create_for!(0)

    assert {:error, %Error{kind: :lease, reason: :not_published}} = Region.read_frame(region)
    assert leases(region) == 0

    :ok = NIF.store_u32(region.ref, 32, ControlBlock.writing())
    assert {:error, %Error{kind: :lease, reason: :busy}} = Region.write_frame(region, "")
    assert {:error, %Error{kind: :lease, reason: :not_published}} = Region.read_frame(region)
    :ok = NIF.store_u32(region.ref, 32, ControlBlock.empty())

    assert {:ok, _} = Region.write_frame(region, "")
    assert {:ok, %Frame{payload: ""}} = Region.read_frame(region)
    # An empty payload holds no lease.
    assert leases(region) == 0
    assert {:error, %Error{reason: :out_of_bounds}} = Region.write_frame(region, "x")
    assert {:ok, %Frame{payload: ""}} = Region.read_frame(region)
  end

  test "a peer attaches, reads, and may neither write nor unlink" do
    region = create_for!(5)
    Region.write_frame!(region, "hello")

    assert {:ok, peer} = Region.attach(region.name)
    refute peer.owner?
    assert peer.size == region.size
    assert {:ok, %Frame{payload: "hello"}} = Region.read_frame(peer)

    assert {:error, %Error{reason: :not_owner}} = Region.write_frame(peer, "x")
    assert {:error, %Error{reason: :not_owner}} = Region.unlink(peer)
    # A forged owner? flag does not make a peer the owner.
    assert {:error, %Error{reason: :not_owner}} = Region.write_frame(%{peer | owner?: true}, "x")
    assert :ok = Region.close(peer)
    assert Shm.exists?(region.name)
    assert {:error, %Error{reason: :closed}} = Region.read_frame(peer)
  end

  test "attach refuses bad names, missing regions and unsafe objects" do
    for name <- [
          "/etc/passwd",
          "bb-1-0123456789abcdef",
          "/bb-1-0123456789ABCDEF",
          "/bb-1-01",
          :x,
          nil
        ] do
      assert {:error, %Error{kind: :region, reason: :bad_name}} = Region.attach(name)
    end

    missing = Shm.forged_name(@prefix, 1)
    assert {:error, %Error{reason: :not_found, field: :name}} = Region.attach(missing)
  end

  test "attach refuses group/other permission bits, foreign owners and non-regular files" do
    region = create_for!(0)
    path = "/dev/shm" <> region.name

    File.chmod!(path, 0o640)
    assert {:error, %Error{reason: :bad_permissions}} = Region.attach(region.name)
    File.chmod!(path, 0o606)
    assert {:error, %Error{reason: :bad_permissions}} = Region.attach(region.name)
    File.chmod!(path, 0o600)
    assert {:ok, _} = Region.attach(region.name)

    if System.cmd("id", ["-u"]) |> elem(0) |> String.trim() == "0" do
      File.chown!(path, 65534)
      assert {:error, %Error{reason: :bad_permissions}} = Region.attach(region.name)
      File.chown!(path, 0)
    end

    fifo = Shm.forged_name(@prefix, 1)
    {_, 0} = System.cmd("mkfifo", ["-m", "600", "/dev/shm" <> fifo])
    on_exit(fn -> File.rm("/dev/shm" <> fifo) end)
    assert {:error, %Error{reason: :bad_permissions}} = Region.attach(fifo)

    link = Shm.forged_name(@prefix, 1)
    File.ln_s!(path, "/dev/shm" <> link)
    on_exit(fn -> File.rm("/dev/shm" <> link) end)
    assert {:error, %Error{reason: :eloop}} = Region.attach(link)
  end

  test "attach refuses a region smaller than 192 bytes" do
    name = Shm.forged_name(@prefix, 1)
    path = "/dev/shm" <> name
    File.write!(path, :binary.copy(<<0>>, 191))
    on_exit(fn -> File.rm(path) end)
    File.chmod!(path, 0o600)

    assert {:error, %Error{reason: :region_too_small}} = Region.attach(name)
  end

  test "attach validates the control block (SPEC §2.1), naming the field" do
    region = create_for!(0)

    for {offset, bytes, field} <- [
          {0, "BBCX", :cb_magic},
          {4, <<2::little-16>>, :layout_version},
          {6, <<128::little-16>>, :cb_size},
          {24, <<region.size + 1::little-64>>, :region_size}
        ] do
      {:ok, saved} = NIF.read_copy(region.ref, offset, byte_size(bytes))
      :ok = NIF.write(region.ref, offset, bytes)

      assert {:error, %Error{kind: :region, reason: :bad_control_block, field: ^field}} =
               Region.attach(region.name)

      :ok = NIF.write(region.ref, offset, saved)
    end

    assert {:ok, _} = Region.attach(region.name)
  end

  test "close unlinks for the owner; payloads read earlier stay valid; close is idempotent" do
    region = Region.create_for_frame!(3, prefix: @prefix)
    Region.write_frame!(region, "abc")
    {:ok, frame} = Region.read_frame(region)

    assert :ok = Region.close(region)
    refute Shm.exists?(region.name)
    assert frame.payload == "abc"
    assert :ok = Region.close(region)

    for result <- [
          Region.read_frame(region),
          Region.write_frame(region, "x")
        ] do
      assert {:error, %Error{kind: :region, reason: :closed}} = result
    end
  end

  test "unlink removes the name but keeps the handle" do
    region = create_for!(1)
    assert :ok = Region.unlink(region)
    refute Shm.exists?(region.name)
    assert {:ok, _} = Region.write_frame(region, "x")
    assert Region.read_frame!(region).payload == "x"
    assert :ok = Region.close(region)
  end

  test "an owner handle collected without close unlinks its name" do
    parent = self()

    {pid, monitor} =
      spawn_monitor(fn ->
        region = Region.create!(4096, prefix: @prefix)
        send(parent, {:name, region.name})
      end)

    assert_receive {:name, name}
    assert_receive {:DOWN, ^monitor, :process, ^pid, :normal}
    :erlang.garbage_collect()
    wait_until(fn -> not Shm.exists?(name) end)
  end

  test "concurrent readers never see a torn or rewritten payload" do
    region = create_for!(4096)
    Region.write_frame!(region, :binary.copy(<<0>>, 4096))
    deadline = System.monotonic_time(:millisecond) + 500

    readers =
      for _ <- 1..4 do
        Task.async(fn -> read_loop(region, deadline, 0) end)
      end

    writes = write_loop(region, deadline, 1, 0)
    reads = Enum.map(readers, &Task.await(&1, 5_000))
    assert Enum.sum(reads) > 0
    assert writes > 0
  end

  defp write_loop(region, deadline, n, ok) do
    if System.monotonic_time(:millisecond) > deadline do
      ok
    else
      case Region.write_frame(region, :binary.copy(<<rem(n, 256)>>, 4096)) do
        {:ok, _} -> write_loop(region, deadline, n + 1, ok + 1)
        {:error, %Error{reason: :leased}} -> write_loop(region, deadline, n, ok)
      end
    end
  end

  defp read_loop(region, deadline, count) do
    if System.monotonic_time(:millisecond) > deadline do
      count
    else
      case Region.read_frame(region) do
        {:ok, %Frame{payload: <<b, _::binary>> = payload}} ->
          # Every byte equal: the frame was not rewritten under the binary.
          assert payload == :binary.copy(<<b>>, 4096)
          Process.sleep(0)
          assert payload == :binary.copy(<<b>>, 4096)
          read_loop(region, deadline, count + 1)

        {:error, %Error{reason: :not_published}} ->
          read_loop(region, deadline, count)
      end
    end
  end

  defp wait_until(fun, tries \\ 100) do
    cond do
      fun.() ->
        :ok

      tries == 0 ->
        flunk("condition not reached")

      true ->
        Process.sleep(10)
        :erlang.garbage_collect()
        wait_until(fun, tries - 1)
    end
  end
end
