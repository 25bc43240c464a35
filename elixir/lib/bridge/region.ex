defmodule Bridge.Region do
  @moduledoc """
  A POSIX shared-memory region (protocol/SPEC.md §1–§2) and the frame it holds.

  The process that creates a region is its *owner* and its only *writer*; it
  unlinks the name when it closes the region, or when the region handle is
  garbage-collected without being closed. Any side may read. Reading hands out
  the payload as a zero-copy binary over the shared memory; the region is not
  rewritten while that binary lives (the reader's lease, SPEC §2.2), and it is
  not unmapped before it is collected.

  Names look like `/<prefix>-<os pid>-<16 hex digits>`; the default prefix is
  `"bb"`.

  A lease ends when the last binary made from it is garbage-collected, which
  can take more than one collection of the process holding it. A process that
  reads a frame and then wants the writer to reuse the region should drop the
  payload (or keep a `:binary.copy/1`) and let the collector run; a writer that
  gets `:leased` can write into another region instead.

  ## Example

      iex> {:ok, region} = Bridge.Region.create_for_frame(5, prefix: "bbdoc")
      iex> {:ok, _header} = Bridge.Region.write_frame(region, "hello")
      iex> {:ok, frame} = Bridge.Region.read_frame(region)
      iex> frame.payload
      "hello"
      iex> Bridge.Region.close(region)
      :ok
  """

  import Bitwise

  alias Bridge.{ControlBlock, Error, Frame, Header, NIF}

  @enforce_keys [:ref, :name, :size]
  defstruct [:ref, :name, :size, owner?: false]

  @type t :: %__MODULE__{
          ref: reference(),
          name: String.t(),
          size: pos_integer(),
          owner?: boolean()
        }

  @cb_size 64
  @min_size 64 + 128
  @max_size 1 <<< 48
  @max_attempts 16
  @default_prefix "bb"
  @name_re ~r/\A\/[a-z0-9]{1,16}-[0-9]{1,10}-[0-9a-f]{16}\z/
  @prefix_re ~r/\A[a-z0-9]{1,16}\z/

  @doc """
  The default name prefix, `"bb"`.

  ## Examples

      iex> Bridge.Region.default_prefix()
      "bb"
  """
  @spec default_prefix() :: String.t()
  def default_prefix, do: @default_prefix

  @doc """
  Whether `name` is a valid region name (SPEC §1.1).

  ## Examples

      iex> Bridge.Region.valid_name?("/bb-123-0123456789abcdef")
      true
      iex> Bridge.Region.valid_name?("/bb-123-xyz")
      false
  """
  @spec valid_name?(term()) :: boolean()
  def valid_name?(name), do: is_binary(name) and Regex.match?(@name_re, name)

  @doc """
  Creates a region of `size` bytes owned by the calling OS process.

  The pages are reserved with `posix_fallocate`, so a full `/dev/shm` is the
  error `:no_space` here rather than a crash later. The control block is filled
  before the name is returned.

  Options: `:prefix` (`[a-z0-9]{1,16}`, default `"bb"`).

  ## Examples

      iex> {:ok, r} = Bridge.Region.create(4096, prefix: "bbdoc")
      iex> {r.size, r.owner?, Bridge.Region.valid_name?(r.name)}
      {4096, true, true}
      iex> Bridge.Region.close(r)
      :ok
      iex> {:error, e} = Bridge.Region.create(100)
      iex> {e.kind, e.reason, e.limit}
      {:region, :region_too_small, 192}
  """
  @spec create(pos_integer(), keyword()) :: {:ok, t()} | {:error, Error.t()}
  def create(size, opts \\ [])

  def create(size, opts) when is_integer(size) and is_list(opts) do
    with :ok <- check_opts(opts),
         {:ok, prefix} <- opt_prefix(opts) do
      cond do
        size < @min_size ->
          {:error, region_error(:region_too_small, :size, size, @min_size)}

        size > @max_size ->
          {:error, region_error(:region_too_large, :size, size, @max_size)}

        true ->
          create_named(prefix, size, @max_attempts)
      end
    end
  end

  def create(size, opts) when is_list(opts), do: {:error, region_error(:badarg, :size, size)}
  def create(_size, opts), do: {:error, region_error(:badarg, :opts, opts)}

  defp create_named(prefix, _size, 0),
    do: {:error, region_error(:name_collision, :name, prefix, @max_attempts)}

  defp create_named(prefix, size, attempts) do
    rand = Base.encode16(:crypto.strong_rand_bytes(8), case: :lower)
    name = "/#{prefix}-#{System.pid()}-#{rand}"

    case NIF.create(name, size) do
      {:ok, ref} ->
        init_control_block(ref, name, size)

      {:error, :eexist} ->
        create_named(prefix, size, attempts - 1)

      {:error, reason} ->
        {:error, Error.from_nif(reason, field: :size, value: size)}
    end
  end

  defp init_control_block(ref, name, size) do
    owner_pid = String.to_integer(System.pid())
    cb = ControlBlock.encode(owner_pid, ControlBlock.own_start_time(), size)

    case NIF.write(ref, 0, cb) do
      :ok ->
        Bridge.OwnedRegions.add(name)
        {:ok, %__MODULE__{ref: ref, name: name, size: size, owner?: true}}

      {:error, reason} ->
        _ = NIF.region_unlink(ref)
        _ = NIF.close(ref)
        {:error, Error.from_nif(reason, field: :control_block)}
    end
  end

  @doc """
  Like `create/2` but returns the region or raises `Bridge.Error`.

  ## Examples

      iex> r = Bridge.Region.create!(192, prefix: "bbdoc")
      iex> Bridge.Region.close!(r)
      :ok
  """
  @spec create!(pos_integer(), keyword()) :: t()
  def create!(size, opts \\ []), do: bang(create(size, opts))

  @doc """
  Creates a region just large enough for one frame with a payload of
  `payload_length` bytes and `:metadata_length` bytes of metadata (default 0).
  Takes the options of `create/2`.

  ## Examples

      iex> {:ok, r} = Bridge.Region.create_for_frame(1000, metadata_length: 10, prefix: "bbdoc")
      iex> r.size
      64 + 192 + 1000
      iex> Bridge.Region.close(r)
      :ok
  """
  @spec create_for_frame(non_neg_integer(), keyword()) :: {:ok, t()} | {:error, Error.t()}
  def create_for_frame(payload_length, opts \\ [])

  def create_for_frame(payload_length, opts)
      when is_integer(payload_length) and payload_length >= 0 and is_list(opts) do
    case Keyword.keyword?(opts) and Keyword.get(opts, :metadata_length, 0) do
      false ->
        {:error, region_error(:badarg, :opts, opts)}

      ml when is_integer(ml) and ml >= 0 and ml <= 1_048_576 ->
        size = @cb_size + Header.payload_offset_for(ml) + payload_length
        create(max(size, @min_size), Keyword.delete(opts, :metadata_length))

      ml ->
        {:error, region_error(:badarg, :metadata_length, ml, 1_048_576)}
    end
  end

  def create_for_frame(payload_length, _opts),
    do: {:error, region_error(:badarg, :payload_length, payload_length)}

  @doc """
  Like `create_for_frame/2` but returns the region or raises `Bridge.Error`.

  ## Examples

      iex> r = Bridge.Region.create_for_frame!(10, prefix: "bbdoc")
      iex> Bridge.Region.close!(r)
      :ok
  """
  @spec create_for_frame!(non_neg_integer(), keyword()) :: t()
  def create_for_frame!(payload_length, opts \\ []),
    do: bang(create_for_frame(payload_length, opts))

  @doc """
  Attaches to a region created by another process (SPEC §1.3).

  Refuses names that do not match the protocol's pattern (`:bad_name`), objects
  that are not regular files owned by us with mode 0600 (`:bad_permissions`),
  objects smaller than 192 bytes (`:region_too_small`) and bad control blocks
  (`:bad_control_block`, naming the field). The size used for every bounds
  check is the `fstat` size read now.

  ## Examples

      iex> {:ok, r} = Bridge.Region.create(4096, prefix: "bbdoc")
      iex> {:ok, peer} = Bridge.Region.attach(r.name)
      iex> {peer.size, peer.owner?}
      {4096, false}
      iex> Bridge.Region.close(peer)
      :ok
      iex> Bridge.Region.close(r)
      :ok
      iex> {:error, e} = Bridge.Region.attach("/etc/passwd")
      iex> e.reason
      :bad_name
  """
  @spec attach(String.t()) :: {:ok, t()} | {:error, Error.t()}
  def attach(name) do
    if valid_name?(name) do
      case NIF.attach(name) do
        {:ok, ref} -> check_attached(ref, name)
        {:error, reason} -> {:error, Error.from_nif(reason, field: :name, value: name)}
      end
    else
      {:error, region_error(:bad_name, :name, name)}
    end
  end

  defp check_attached(ref, name) do
    {:ok, size} = NIF.size(ref)

    result =
      case NIF.read_copy(ref, 0, @cb_size) do
        {:ok, cb} -> ControlBlock.validate(cb, size)
        {:error, reason} -> {:error, Error.from_nif(reason)}
      end

    case result do
      {:ok, _} ->
        {:ok, %__MODULE__{ref: ref, name: name, size: size, owner?: false}}

      {:error, _} = error ->
        :ok = NIF.close(ref)
        error
    end
  end

  @doc """
  Like `attach/1` but returns the region or raises `Bridge.Error`.

  ## Examples

      iex> Bridge.Region.attach!("/bb-1-0000000000000000")
      ** (Bridge.Error) region error: not_found: field name is "/bb-1-0000000000000000" (no region of that name; its owner may have closed it)
  """
  @spec attach!(String.t()) :: t()
  def attach!(name), do: bang(attach(name))

  @doc """
  Writes one frame into an owned region: the writer side of the lease protocol
  (SPEC §2.2). Takes the options of `Bridge.Header.build/2`; the generation is
  the region's next one. Returns the header written.

  Fails with kind `:lease`, reason `:leased` while a reader holds a lease (a
  payload binary of an earlier read is still alive); nothing is written then.
  Only the owner writes (`:not_owner`).

  ## Examples

      iex> r = Bridge.Region.create_for_frame!(3, prefix: "bbdoc")
      iex> {:ok, h} = Bridge.Region.write_frame(r, "abc", format: :raw)
      iex> {h.generation, h.payload_length}
      {1, 3}
      iex> {:error, e} = Bridge.Region.write_frame(r, "too long")
      iex> e.reason
      :out_of_bounds
      iex> Bridge.Region.close(r)
      :ok
  """
  @spec write_frame(t(), iodata(), keyword()) :: {:ok, Header.t()} | {:error, Error.t()}
  def write_frame(region, payload, opts \\ [])

  # iodata (a bundle's tensors and their padding) is copied part by part straight
  # into the region, never joined into one binary first.
  def write_frame(%__MODULE__{ref: ref}, payload, opts)
      when is_list(payload) and is_list(opts) do
    iovec =
      try do
        :erlang.iolist_to_iovec(payload)
      rescue
        ArgumentError -> :bad
      end

    if iovec == :bad,
      do: {:error, region_error(:badarg, :payload, payload)},
      else: write_parts(ref, iovec, opts)
  end

  def write_frame(%__MODULE__{ref: ref}, payload, opts)
      when is_binary(payload) and is_list(opts),
      do: write_parts(ref, payload, opts)

  def write_frame(%__MODULE__{}, payload, opts) when is_list(opts),
    do: {:error, region_error(:badarg, :payload, payload)}

  def write_frame(%__MODULE__{}, _payload, opts),
    do: {:error, region_error(:badarg, :opts, opts)}

  def write_frame(region, _payload, _opts), do: {:error, region_error(:badarg, :region, region)}

  # `payload` is a binary or an iovec (a list of binaries).
  defp write_parts(ref, payload, opts) do
    {checksum?, build_opts} = defer_checksum(opts)

    with {:ok, size} <- real_size(ref),
         :ok <- check_owner(ref),
         {:ok, h} <- Header.build(payload, build_opts),
         :ok <- check_fits(h, size - @cb_size),
         {:ok, previous} <- begin_write(ref) do
      publish(ref, h, Keyword.get(opts, :metadata, ""), payload, checksum?, previous)
    end
  end

  # The payload checksum is computed while the payload is copied into the region
  # (NIF.write_hashed: one pass over memory instead of two), so the header is built
  # without it and completed in publish/6. A :checksum option that is not a boolean is
  # left for Header.build to refuse.
  defp defer_checksum(opts) do
    with true <- Keyword.keyword?(opts),
         checksum? when is_boolean(checksum?) <- Keyword.get(opts, :checksum, true) do
      {checksum?, Keyword.put(opts, :checksum, false)}
    else
      _ -> {false, opts}
    end
  end

  defp check_fits(h, frame_size) do
    if h.payload_offset + h.payload_length <= frame_size do
      :ok
    else
      {:error,
       region_error(
         :out_of_bounds,
         :payload_length,
         h.payload_length,
         frame_size - h.payload_offset
       )}
    end
  end

  # Steps 1-2: WRITING, then look at the reader's word.
  defp begin_write(ref) do
    state_off = ControlBlock.writer_state_off()

    with {:ok, previous} <- nif(NIF.load_u32(ref, state_off)),
         :ok <- not_writing(previous),
         {:ok, ^previous} <- cas_state(ref, previous, ControlBlock.writing()),
         {:ok, leases} <- nif(NIF.load_u32(ref, ControlBlock.reader_leases_off())) do
      if leases == 0 do
        {:ok, previous}
      else
        _ = NIF.store_u32(ref, state_off, previous)
        {:error, Error.new(:lease, :leased, field: :reader_leases, value: leases, limit: 0)}
      end
    end
  end

  defp not_writing(state) do
    if state == ControlBlock.writing(),
      do: {:error, Error.new(:lease, :busy, field: :writer_state, value: state)},
      else: :ok
  end

  defp cas_state(ref, expected, desired) do
    case nif(NIF.cas_u32(ref, ControlBlock.writer_state_off(), expected, desired)) do
      {:ok, ^expected} -> {:ok, expected}
      {:ok, other} -> {:error, Error.new(:lease, :busy, field: :writer_state, value: other)}
      error -> error
    end
  end

  # Steps 3-5.
  defp publish(ref, h, metadata, payload, checksum?, _previous) do
    gen_off = ControlBlock.writer_generation_off()

    result =
      with {:ok, generation} <- nif(NIF.load_u64(ref, gen_off)),
           g = band(generation + 1, (1 <<< 64) - 1),
           :ok <- nif(NIF.store_u64(ref, gen_off, g)),
           {:ok, h} <- write_payload(ref, %{h | generation: g}, payload, checksum?),
           {:ok, header} <- Header.encode(h, metadata),
           padding = :binary.copy(<<0>>, h.payload_offset - 128 - byte_size(metadata)),
           :ok <-
             nif(NIF.write(ref, @cb_size, [header, metadata, padding] |> IO.iodata_to_binary())),
           {:ok, checksum} <- header_checksum(header) do
        {:ok, %{h | header_checksum: checksum}}
      end

    state =
      case result do
        {:ok, _} -> ControlBlock.published()
        {:error, _} -> ControlBlock.empty()
      end

    _ = NIF.store_u32(ref, ControlBlock.writer_state_off(), state)
    result
  end

  defp write_payload(ref, h, payload, false) when is_binary(payload) do
    with :ok <- nif(NIF.write(ref, @cb_size + h.payload_offset, payload)), do: {:ok, h}
  end

  defp write_payload(ref, h, payload, true) when is_binary(payload) do
    with {:ok, xxh3} <- nif(NIF.write_hashed(ref, @cb_size + h.payload_offset, payload)) do
      {:ok, %{h | flags: h.flags ||| Header.flag_payload_checksum(), payload_checksum: xxh3}}
    end
  end

  # An iovec: each binary at its offset, then (checksum) one hashing pass over the
  # payload as it lies in the region.
  defp write_payload(ref, h, parts, checksum?) when is_list(parts) do
    start = @cb_size + h.payload_offset

    written =
      Enum.reduce_while(parts, {:ok, start}, fn part, {:ok, at} ->
        case nif(NIF.write(ref, at, part)) do
          :ok -> {:cont, {:ok, at + byte_size(part)}}
          error -> {:halt, error}
        end
      end)

    with {:ok, _end} <- written do
      if checksum? do
        with {:ok, xxh3} <- nif(NIF.xxh3_64_region(ref, start, h.payload_length)) do
          {:ok, %{h | flags: h.flags ||| Header.flag_payload_checksum(), payload_checksum: xxh3}}
        end
      else
        {:ok, h}
      end
    end
  end

  defp header_checksum(<<_::binary-size(120), checksum::little-64>>), do: {:ok, checksum}

  @doc """
  Like `write_frame/3` but returns the header or raises `Bridge.Error`.

  ## Examples

      iex> r = Bridge.Region.create_for_frame!(1, prefix: "bbdoc")
      iex> Bridge.Region.write_frame!(r, "x").generation
      1
      iex> Bridge.Region.close!(r)
      :ok
  """
  @spec write_frame!(t(), binary(), keyword()) :: Header.t()
  def write_frame!(region, payload, opts \\ []), do: bang(write_frame(region, payload, opts))

  @doc """
  Reads the published frame: the reader side of the lease protocol (SPEC §2.2).

  Header and metadata are copied into private memory and validated (SPEC §4);
  the payload is a zero-copy binary over the region that holds the lease until
  it is garbage-collected. The payload checksum is verified unless
  `verify: false`; a frame whose generation is not the region's current one is
  `:stale_generation`.

  Options: `:verify` (default `true`), `:max_decoded_length` (default 2^32).

  ## Examples

      iex> r = Bridge.Region.create_for_frame!(4, metadata_length: 2, prefix: "bbdoc")
      iex> {:error, e} = Bridge.Region.read_frame(r)
      iex> {e.kind, e.reason}
      {:lease, :not_published}
      iex> Bridge.Region.write_frame!(r, "data", metadata: "md", format: :etf).format
      3
      iex> {:ok, %Bridge.Frame{metadata: "md", payload: "data"}} = Bridge.Region.read_frame(r)
      iex> Bridge.Region.close(r)
      :ok
  """
  @spec read_frame(t(), keyword()) :: {:ok, Frame.t()} | {:error, Error.t()}
  def read_frame(region, opts \\ [])

  def read_frame(%__MODULE__{ref: ref}, opts) when is_list(opts) do
    verify = Keyword.keyword?(opts) and Keyword.get(opts, :verify, true)

    if is_boolean(verify) and Keyword.keyword?(opts) do
      with {:ok, size} <- real_size(ref),
           {:ok, lease} <- acquire(ref) do
        case read_leased(ref, lease, size - @cb_size, verify, opts) do
          {:ok, _} = ok ->
            ok

          {:error, _} = error ->
            _ = NIF.lease_release(lease)
            error
        end
      end
    else
      {:error, region_error(:badarg, :opts, opts)}
    end
  end

  def read_frame(%__MODULE__{}, opts), do: {:error, region_error(:badarg, :opts, opts)}
  def read_frame(region, _opts), do: {:error, region_error(:badarg, :region, region)}

  defp acquire(ref) do
    published = ControlBlock.published()

    case NIF.lease_acquire(
           ref,
           ControlBlock.reader_leases_off(),
           ControlBlock.writer_state_off(),
           published
         ) do
      {:ok, lease} ->
        {:ok, lease}

      {:error, :state_mismatch} ->
        {:error, Error.new(:lease, :not_published, field: :writer_state, limit: published)}

      {:error, reason} ->
        {:error, Error.from_nif(reason)}
    end
  end

  defp read_leased(ref, lease, frame_size, verify, opts) do
    with {:ok, generation} <- nif(NIF.load_u64(ref, ControlBlock.writer_generation_off())),
         {:ok, copy} <- copy_header_and_metadata(ref, frame_size),
         {:ok, h} <- Header.parse(copy, frame_size, opts),
         :ok <- verify_payload(ref, h, verify),
         :ok <- check_generation(h, generation),
         {:ok, payload} <- payload_binary(lease, h) do
      metadata = binary_part(copy, 128, h.metadata_length)
      {:ok, %Frame{header: h, metadata: metadata, payload: payload}}
    end
  end

  # Header first; the metadata length used for the second copy comes from the
  # private header copy, and Header.parse checks it against the frame before
  # using the metadata.
  defp copy_header_and_metadata(ref, frame_size) do
    with {:ok, header} <- nif(NIF.read_copy(ref, @cb_size, 128)) do
      <<_::binary-size(36), metadata_length::little-32, _::binary>> = header

      if metadata_length <= Header.max_metadata() and 128 + metadata_length <= frame_size do
        with {:ok, metadata} <- nif(NIF.read_copy(ref, @cb_size + 128, metadata_length)) do
          {:ok, header <> metadata}
        end
      else
        {:ok, header}
      end
    end
  end

  defp verify_payload(_ref, _h, false), do: :ok

  defp verify_payload(ref, h, true) do
    if band(h.flags, 1) == 0 do
      :ok
    else
      with {:ok, computed} <-
             nif(NIF.xxh3_64_region(ref, @cb_size + h.payload_offset, h.payload_length)) do
        Header.checksum_result(h, computed)
      end
    end
  end

  defp check_generation(%Header{generation: g}, g), do: :ok

  defp check_generation(%Header{generation: g}, current),
    do:
      {:error,
       Error.new(:bad_frame, :stale_generation, field: :generation, value: g, limit: current)}

  defp payload_binary(lease, %Header{payload_length: 0}) do
    _ = NIF.lease_release(lease)
    {:ok, ""}
  end

  defp payload_binary(lease, h),
    do: nif(NIF.lease_binary(lease, @cb_size + h.payload_offset, h.payload_length))

  @doc """
  Like `read_frame/2` but returns the frame or raises `Bridge.Error`.

  ## Examples

      iex> r = Bridge.Region.create_for_frame!(2, prefix: "bbdoc")
      iex> Bridge.Region.write_frame!(r, "hi").payload_length
      2
      iex> Bridge.Region.read_frame!(r).payload
      "hi"
      iex> Bridge.Region.close!(r)
      :ok
  """
  @spec read_frame!(t(), keyword()) :: Frame.t()
  def read_frame!(region, opts \\ []), do: bang(read_frame(region, opts))

  @doc """
  Closes the handle. The owner also unlinks the name. Payload binaries read
  earlier stay valid (the mapping lives until they are collected); other
  operations on the handle return `:closed`. Closing twice is fine.

  ## Examples

      iex> r = Bridge.Region.create!(192, prefix: "bbdoc")
      iex> Bridge.Region.close(r)
      :ok
      iex> {:error, e} = Bridge.Region.read_frame(r)
      iex> e.reason
      :closed
  """
  @spec close(t()) :: :ok | {:error, Error.t()}
  def close(%__MODULE__{ref: ref}) do
    with :ok <- nif(NIF.close(ref)) do
      case NIF.owner?(ref) do
        # A name already gone (unlinked at application stop) is fine here.
        {:ok, true} -> with {:error, %Error{reason: :not_found}} <- unlink_owned(ref), do: :ok
        {:ok, false} -> :ok
      end
    end
  end

  def close(region), do: {:error, region_error(:badarg, :region, region)}

  @doc """
  Like `close/1` but raises `Bridge.Error` on failure.

  ## Examples

      iex> Bridge.Region.close!(Bridge.Region.create!(192, prefix: "bbdoc"))
      :ok
  """
  @spec close!(t()) :: :ok
  def close!(region), do: bang(close(region))

  @doc """
  Unlinks the region's name now, keeping the handle usable (owner only, SPEC
  §1.4). Peers that attached keep their mappings; nobody new can attach.

  ## Examples

      iex> r = Bridge.Region.create!(192, prefix: "bbdoc")
      iex> Bridge.Region.unlink(r)
      :ok
      iex> {:error, e} = Bridge.Region.attach(r.name)
      iex> e.reason
      :not_found
      iex> Bridge.Region.close(r)
      :ok
  """
  @spec unlink(t()) :: :ok | {:error, Error.t()}
  def unlink(%__MODULE__{ref: ref}) do
    with :ok <- check_owner(ref), do: unlink_owned(ref)
  end

  def unlink(region), do: {:error, region_error(:badarg, :region, region)}

  @doc """
  Like `unlink/1` but raises `Bridge.Error` on failure.

  ## Examples

      iex> r = Bridge.Region.create!(192, prefix: "bbdoc")
      iex> Bridge.Region.unlink!(r)
      :ok
      iex> Bridge.Region.close!(r)
      :ok
  """
  @spec unlink!(t()) :: :ok
  def unlink!(region), do: bang(unlink(region))

  @doc """
  Unlinks regions of `:prefix` (default `"bb"`) whose owner process is dead
  (SPEC §1.5). Returns the names removed.

  ## Examples

      iex> {:ok, removed} = Bridge.Region.reap_stale(prefix: "bbdocnone")
      iex> removed
      []
  """
  @spec reap_stale(keyword()) :: {:ok, [String.t()]} | {:error, Error.t()}
  def reap_stale(opts \\ [])

  def reap_stale(opts) when is_list(opts) do
    with :ok <- check_opts(opts),
         {:ok, prefix} <- opt_prefix(opts),
         do: Bridge.Reaper.reap(prefix)
  end

  def reap_stale(opts), do: {:error, region_error(:badarg, :opts, opts)}

  @doc """
  Like `reap_stale/1` but returns the names removed or raises `Bridge.Error`.

  ## Examples

      iex> Bridge.Region.reap_stale!(prefix: "bbdocnone")
      []
  """
  @spec reap_stale!(keyword()) :: [String.t()]
  def reap_stale!(opts \\ []), do: bang(reap_stale(opts))

  # The size the NIF mapped (fstat at create/attach), never the struct's copy.
  defp real_size(ref) do
    case NIF.size(ref) do
      {:ok, size} -> {:ok, size}
      {:error, :badarg} -> {:error, region_error(:badarg, :region, ref)}
    end
  end

  defp unlink_owned(ref) do
    {:ok, name} = NIF.name(ref)
    Bridge.OwnedRegions.remove(name)
    nif(NIF.region_unlink(ref))
  end

  # Only the owner writes and unlinks (SPEC §1.4, §2); the NIF knows who created it.
  defp check_owner(ref) do
    case NIF.owner?(ref) do
      {:ok, true} -> :ok
      {:ok, false} -> {:error, region_error(:not_owner, :owner?, false, true)}
      {:error, reason} -> nif({:error, reason})
    end
  end

  defp check_opts(opts) do
    if Keyword.keyword?(opts), do: :ok, else: {:error, region_error(:badarg, :opts, opts)}
  end

  defp opt_prefix(opts) do
    case Keyword.get(opts, :prefix, @default_prefix) do
      p when is_binary(p) ->
        if Regex.match?(@prefix_re, p),
          do: {:ok, p},
          else: {:error, region_error(:bad_name, :prefix, p)}

      p ->
        {:error, region_error(:bad_name, :prefix, p)}
    end
  end

  defp nif(:ok), do: :ok
  defp nif({:ok, _} = ok), do: ok
  defp nif({:error, reason}) when is_atom(reason), do: {:error, Error.from_nif(reason)}

  defp region_error(reason, field, value, limit \\ nil),
    do: Error.new(:region, reason, field: field, value: value, limit: limit)

  defp bang(:ok), do: :ok
  defp bang({:ok, value}), do: value
  defp bang({:error, %Error{} = e}), do: raise(e)
end
