"""The floor for a small call: a Port round trip of one frame, no decoding at all."""

from __future__ import annotations

import os
import struct

IN, OUT = 3, 4


def main() -> None:
    while True:
        head = os.read(IN, 4)
        if len(head) < 4:
            return
        (length,) = struct.unpack(">I", head)
        body = b""
        while len(body) < length:
            chunk = os.read(IN, length - len(body))
            if not chunk:
                return
            body += chunk
        os.write(OUT, head + body)


if __name__ == "__main__":
    main()
