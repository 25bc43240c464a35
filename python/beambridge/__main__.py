"""``python -m beambridge inspect PATH``: describe a frame without reading its payload.

``PATH`` is a file a dump wrote (``beambridge.frame.dump``, ``Bridge.Frame.dump/2``) or a
live slice ``/proc/PID/fd/FD@OFFSET`` (the ``handle`` of a description). Prints the
description as JSON (`beambridge.description.to_json`, what ``mix beambridge.inspect``
prints too); exits 1 with a message on stderr when the frame's header does not validate
or the file cannot be read, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys

from .description import read_file, to_json
from .errors import BridgeError


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; the exit status.

    >>> from beambridge.header import encode_frame
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "f")
    >>> open(path, "wb").write(encode_frame(b"abc")) and None
    >>> main(["inspect", path])  # doctest: +ELLIPSIS
    {
      "checksum": "not_verified",
    ...
    0
    >>> main(["inspect", path + ".missing"])
    1
    """
    parser = argparse.ArgumentParser(
        prog="python -m beambridge", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser(
        "inspect", help="describe a frame (a dump or /proc/PID/fd/FD@OFFSET), payload unread"
    )
    inspect.add_argument("path")
    args = parser.parse_args(argv)
    try:
        description = read_file(args.path)
    except BridgeError as err:
        print(f"beambridge inspect: {args.path}: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"beambridge inspect: {args.path}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(to_json(description))
    return 0


if __name__ == "__main__":
    sys.exit(main())
