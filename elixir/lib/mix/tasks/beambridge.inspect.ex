defmodule Mix.Tasks.Beambridge.Inspect do
  @shortdoc "Describes a frame (a dump or a live slice) without reading its payload"

  @moduledoc """
  Prints what a frame says of itself — format, schema, lengths, checksum state,
  when and by whom it was written, the call's metadata and its lineage —
  reading only its header, metadata and provenance block (protocol/SPEC.md §5):

      mix beambridge.inspect weights.frame
      mix beambridge.inspect /proc/4242/fd/7@65536

  `PATH` is a file `Bridge.Frame.dump/2` or `beambridge.frame.dump` wrote, or a
  live slice named as a description's `handle` (`/proc/PID/fd/FD@OFFSET`,
  while its owner runs, as the same user). The output is JSON, the same that
  `python -m beambridge inspect PATH` prints (`Bridge.Frame.Description.to_json/1`).
  A header that does not validate, or a file that cannot be read, is an error
  naming the field.
  """

  use Mix.Task

  @impl Mix.Task
  def run(args) do
    case OptionParser.parse(args, strict: []) do
      {_, [path], []} ->
        Mix.Task.run("loadpaths")
        Application.load(:beambridge)

        case Bridge.Frame.describe_file(path) do
          {:ok, description} -> Mix.shell().info(Bridge.Frame.Description.to_json(description))
          {:error, e} -> Mix.raise("beambridge.inspect: #{path}: #{Exception.message(e)}")
        end

      _ ->
        Mix.raise("usage: mix beambridge.inspect PATH (a dump, or /proc/PID/fd/FD@OFFSET)")
    end
  end
end
