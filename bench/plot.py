"""Plot bench/results/latest.json: echo round-trip time against payload size.

python bench/plot.py RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(src: str, dst: str) -> None:
    with open(src) as f:
        results = json.load(f)
    rows = results["echo"]
    sizes = [r["size"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, label, style in (
        ("etf_port_us", "ETF over a Port (erlang-py, ErlPort-style)", "o-"),
        ("bridge_us", "Bridge.call, binary argument (handler gets bytes)", "s-"),
        ("bridge_buffer_us", "Bridge.call, Bridge.Buffer argument (memoryview)", "^-"),
        ("two_memcpy_us", "two memcpys of the payload", "--"),
    ):
        ax.plot(sizes, [r[key] / 1000 for r in rows], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("payload (bytes)")
    ax.set_ylabel("echo round trip (ms, median)")
    small = results["small_call"]
    ax.set_title(
        "beambridge echo round trip — small call p50 "
        f"{small['bridge_p50_us']:.0f} µs vs raw Port {small['raw_port_p50_us']:.0f} µs"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
