defmodule Bridge.Arrow.Builder.Nested do
  @moduledoc false
  # Elixir terms to arrays of the nested and view types, for
  # Bridge.Arrow.Builder: structs from maps, maps from lists of {key, value}
  # (or Elixir maps), fixed-size lists, list views, unions from
  # {type_code | field_name, value}, run-end encoded arrays from runs of equal
  # values, and the view layouts of strings and binaries. A child whose
  # parent slot is null holds a null there (or, in a non-nullable child, a
  # null no reader looks at); a nil the caller put in a non-nullable child is
  # an error, unless the child's type keeps it as a value (a dictionary, a
  # run-end encoded array: Builder.null_value?/1).

  import Bitwise
  import Bridge.Arrow.Errors, only: [fail_value: 2]

  alias Bridge.Arrow.{Array, Builder, Field, Type}

  @doc false
  @spec fill(Array.t(), [term()], String.t()) :: Array.t()
  def fill(%Array{type: {:struct, fields}} = a, values, at) do
    names = Enum.map(fields, & &1.name)

    Enum.each(Enum.with_index(values), fn
      {nil, _} -> :ok
      {v, i} when is_map(v) and not is_struct(v) -> check_keys(v, names, at, i)
      {v, i} -> Builder.wrong(v, "a map with keys #{inspect(names)}", at, i)
    end)

    children =
      for %Field{name: name} = f <- fields do
        atom = existing_atom(name)
        column = Enum.map(values, &field_value(&1, name, atom))
        child(column, values, f, at <> " (field #{inspect(name)})")
      end

    %{a | children: children}
  end

  def fill(%Array{type: {:map, %Field{type: {:struct, [k, v]}} = entries, _}} = a, values, at) do
    pairs =
      values
      |> Enum.with_index()
      |> Enum.map(fn
        {nil, _} -> nil
        {m, _} when is_map(m) and not is_struct(m) -> Map.to_list(m)
        {l, i} when is_list(l) -> Enum.map(l, &pair(&1, at, i))
        {x, i} -> Builder.wrong(x, "a list of {key, value} or a map", at, i)
      end)

    {offsets, items} = offsets(pairs, 32, a.type, at)
    keys = Enum.map(items, &elem(&1, 0))
    key_array = Builder.build(keys, k, at <> " (map keys)")
    value_array = Builder.build(Enum.map(items, &elem(&1, 1)), v, at <> " (map values)")

    entries_array = %Array{
      type: entries.type,
      length: length(items),
      children: [key_array, value_array]
    }

    %{a | offsets: offsets, children: [entries_array]}
  end

  def fill(%Array{type: {:fixed_size_list, f, size}} = a, values, at) do
    items =
      values
      |> Enum.with_index()
      |> Enum.flat_map(fn
        {nil, _} -> List.duplicate(nil, size)
        {l, _} when is_list(l) and length(l) == size -> l
        {x, i} -> Builder.wrong(x, "a list of #{size} elements", at, i)
      end)

    parents = Enum.flat_map(values, &List.duplicate(&1, size))
    %{a | children: [child(items, parents, f, at <> " (list items)")]}
  end

  def fill(%Array{type: {kind, f}} = a, values, at) when kind in [:list_view, :large_list_view] do
    Enum.each(Enum.with_index(values), fn
      {v, _} when is_list(v) or v == nil -> :ok
      {v, i} -> Builder.wrong(v, "a list", at, i)
    end)

    w = Type.offset_width(a.type) * 8
    {offsets, items} = offsets(values, w, a.type, at)
    <<_::size(w), ends::binary>> = offsets
    starts = binary_part(offsets, 0, byte_size(ends))

    sizes =
      for {s, e} <- Enum.zip(ints(starts, w), ints(ends, w)),
          into: <<>>,
          do: <<e - s::little-size(w)>>

    child = Builder.build(items, f, at <> " (list items)")
    %{a | offsets: starts, sizes: sizes, children: [child]}
  end

  def fill(%Array{type: {:union, mode, fields, codes}} = a, values, at) do
    by_name = fields |> Enum.map(& &1.name) |> Enum.zip(codes) |> unique_names()

    tagged =
      values
      |> Enum.with_index()
      |> Enum.map(fn {v, i} -> tag(v, codes, by_name, at, i) end)

    slots = Enum.map(tagged, fn {c, _} -> Enum.find_index(codes, &(&1 == c)) end)
    data = for {c, _} <- tagged, into: <<>>, do: <<c::signed-8>>
    member = fn f -> at <> " (union member #{inspect(f.name)})" end

    {children, offsets} =
      case mode do
        :sparse ->
          children =
            for {f, j} <- Enum.with_index(fields) do
              column = Enum.zip_with(tagged, slots, fn {_, v}, s -> if s == j, do: v end)
              Builder.build(column, %{f | nullable: true}, member.(f))
            end

          {children, nil}

        :dense ->
          {offs, _counts} =
            Enum.map_reduce(slots, %{}, fn s, counts ->
              n = Map.get(counts, s, 0)
              {<<n::little-signed-32>>, Map.put(counts, s, n + 1)}
            end)

          children =
            for {f, j} <- Enum.with_index(fields) do
              column = for {{_, v}, ^j} <- Enum.zip(tagged, slots), do: v
              Builder.build(column, %{f | nullable: true}, member.(f))
            end

          {children, IO.iodata_to_binary(offs)}
      end

    %{a | null_count: 0, validity: nil, data: data, offsets: offsets, children: children}
  end

  def fill(%Array{type: {:run_end_encoded, ends_field, values_field}} = a, values, at) do
    {:s, w} = ends_field.type
    runs = runs(values)
    {ends, last} = Enum.map_reduce(runs, 0, fn {_v, n}, acc -> {acc + n, acc + n} end)

    if last >= 1 <<< (w - 1),
      do: Builder.int_overflow(last, ends_field.type, at <> " (run ends)", nil)

    ends_array = %Array{
      type: ends_field.type,
      length: length(ends),
      data: for(e <- ends, into: <<>>, do: <<e::little-signed-size(w)>>)
    }

    # (nil runs come from null parents too: the values are nullable here)
    run_values =
      Builder.build(
        Enum.map(runs, &elem(&1, 0)),
        %{values_field | nullable: true},
        at <> " (run values)"
      )

    %{a | null_count: 0, validity: nil, children: [ends_array, run_values]}
  end

  def fill(%Array{type: t} = a, values, at) when t in [:utf8_view, :binary_view] do
    {views, {_pos, data}} =
      values
      |> Enum.with_index()
      |> Enum.map_reduce({0, []}, fn
        {nil, _}, acc ->
          {<<0::128>>, acc}

        {v, i}, _acc when not is_binary(v) ->
          Builder.wrong(v, "a binary", at, i)

        {v, i}, {pos, data} ->
          if t == :utf8_view and not String.valid?(v), do: Builder.not_utf8(v, at, i)
          view(v, pos, data, at)
      end)

    data = IO.iodata_to_binary(Enum.reverse(data))
    %{a | data: IO.iodata_to_binary(views), variadic: if(data == "", do: [], else: [data])}
  end

  defp view(v, pos, data, _at) when byte_size(v) <= 12 do
    pad = 12 - byte_size(v)
    {<<byte_size(v)::little-32, v::binary, 0::size(pad * 8)>>, {pos, data}}
  end

  defp view(v, pos, data, at) do
    if pos + byte_size(v) >= 1 <<< 31,
      do:
        fail_value(:offset_overflow,
          field: :value,
          value: pos,
          limit: (1 <<< 31) - 1,
          at: at,
          hint: "more than 2 GiB of long strings in one column chunk; split the table"
        )

    <<prefix::binary-4, _::binary>> = v
    view = <<byte_size(v)::little-32, prefix::binary, 0::little-32, pos::little-32>>
    {view, {pos + byte_size(v), [v | data]}}
  end

  # ----------------------------------------------------------------- helpers

  # A child array of a struct or fixed-size list: `column` holds nil where the
  # parent (in `parents`) is nil; nils elsewhere must be allowed by the field,
  # or kept as values by its type (Builder.null_value?/1).
  defp child(column, parents, %Field{nullable: nullable, type: type} = f, at) do
    unless nullable or Builder.null_value?(type) do
      bad = Enum.zip(column, parents) |> Enum.find_index(fn {c, p} -> c == nil and p != nil end)

      if bad != nil,
        do:
          fail_value(:null_in_non_nullable,
            field: :value,
            value: nil,
            at: Builder.row(at, bad),
            hint: "declare the field nullable or drop the nils"
          )
    end

    Builder.build(column, %{f | nullable: true}, at)
  end

  defp check_keys(map, names, at, i) do
    extra =
      map
      |> Map.keys()
      |> Enum.reject(fn k ->
        (is_binary(k) and k in names) or (is_atom(k) and Atom.to_string(k) in names)
      end)

    if extra != [],
      do:
        fail_value(:unknown_field,
          field: :key,
          value: hd(extra),
          limit: inspect(names),
          at: Builder.row(at, i),
          hint: "the struct type has no such field; add it to the type or drop the key"
        )
  end

  defp existing_atom(name) do
    String.to_existing_atom(name)
  rescue
    ArgumentError -> nil
  end

  defp field_value(nil, _name, _atom), do: nil

  defp field_value(map, name, atom) do
    case map do
      %{^name => v} -> v
      _ when atom != nil -> Map.get(map, atom)
      _ -> nil
    end
  end

  defp pair({k, v}, _at, _i), do: {k, v}
  defp pair(x, at, i), do: Builder.wrong(x, "a {key, value} tuple", at, i)

  # Offsets over lists (nil for a null slot) and their concatenated items.
  defp offsets(lists, w, type, at) do
    {offsets, _last} = Builder.offsets(lists, &length/1, w, type, at)
    {offsets, lists |> Enum.reject(&is_nil/1) |> Enum.concat()}
  end

  defp ints(bin, w), do: for(<<x::little-size(w) <- bin>>, do: x)

  defp unique_names(pairs) do
    names = Enum.map(pairs, &elem(&1, 0))
    pairs |> Enum.filter(fn {n, _} -> Enum.count(names, &(&1 == n)) == 1 end) |> Map.new()
  end

  # A null slot (a union under a null parent, or a nil given for one): a null
  # of the first member.
  defp tag(nil, [c | _], _by_name, _at, _i), do: {c, nil}

  defp tag({c, v}, codes, _by_name, at, i) when is_integer(c) do
    if c in codes, do: {c, v}, else: bad_tag({c, v}, codes, at, i)
  end

  defp tag({name, v}, codes, by_name, at, i) when is_binary(name) or is_atom(name) do
    key = if is_atom(name), do: Atom.to_string(name), else: name

    case by_name do
      %{^key => c} -> {c, v}
      _ -> bad_tag({name, v}, codes, at, i)
    end
  end

  defp tag(v, codes, _by_name, at, i),
    do: Builder.wrong(v, "{type_code, value} with a code in #{inspect(codes)}", at, i)

  defp bad_tag(v, codes, at, i) do
    fail_value(:unknown_union_member,
      field: :value,
      value: v,
      limit: inspect(codes),
      at: Builder.row(at, i),
      hint: "tag union values with one of the type codes, or a member's (unique) field name"
    )
  end

  # Consecutive equal values as {value, count}.
  defp runs([]), do: []

  defp runs([first | rest]) do
    {runs, last, n} =
      Enum.reduce(rest, {[], first, 1}, fn
        v, {runs, cur, n} when v === cur -> {runs, cur, n + 1}
        v, {runs, cur, n} -> {[{cur, n} | runs], v, 1}
      end)

    Enum.reverse([{last, n} | runs])
  end
end
