"""Table and plots of a WebRTC side-by-side run (bench/webrtc_load.py's webrtc.json).

    .venv/bin/python bench/webrtc_report.py RUN_FOLDER OUT_FOLDER   # writes webrtc_table.md, webrtc_*.png

Levels measured more than once (--repeat) are shown as their median, the attempts' range in the JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

COLUMNS = [
    ("answered", "answered"), ("turns", "turns_answered_pct"), ("p50 ms", "turn_p50_ms"), ("p95 ms", "turn_p95_ms"),
    ("audible p50 ms", "audible_p50_ms"),
    ("split replies", "split_replies"), ("old reply heard p50 ms", "old_reply_p50_ms"), ("stalls %", "stall_pct"),
    ("server CPU ms/call-s", "server_cpu_ms_per_call_second"),
    ("callers' CPU ms/call-s", "caller_cpu_ms_per_call_second"),
    ("RSS/call MB", "rss_per_call_mb"), ("threads", "threads_peak"), ("other cores", "other_cores"),
    ("stolen %", "steal_pct"),
]


def grouped(levels: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for level in levels:
        groups.setdefault((level["server"], level["calls"]), []).append(level)
    return groups


def cell(values: list[Any]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return str(values[0])
    return f"{statistics.median(values):g} ({min(values):g}-{max(values):g})"


def table(levels: list[dict[str, Any]]) -> str:
    lines = ["| server | N | " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for (server, calls), group in sorted(grouped(levels).items(), key=lambda item: (item[0][1], item[0][0])):
        cells = []
        for _, key in COLUMNS:
            if key == "answered":
                cells.append(f"{sum(lv['answered'] for lv in group)}/{calls * len(group)}")
            else:
                cells.append(cell([lv.get(key) for lv in group]))
        lines.append(f"| {server} | {calls} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(levels: list[dict[str, Any]], out: Path, prefix: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = grouped(levels)
    servers = sorted({server for server, _ in groups})
    figure, (latency, cpu) = plt.subplots(1, 2, figsize=(11, 4))
    for server in servers:
        ns = sorted(calls for s, calls in groups if s == server)
        p50 = [statistics.median(lv["turn_p50_ms"] or 0 for lv in groups[(server, n)]) for n in ns]
        p95 = [statistics.median(lv["turn_p95_ms"] or 0 for lv in groups[(server, n)]) for n in ns]
        line, = latency.plot(ns, p50, marker="o", label=f"{server} p50")
        latency.plot(ns, p95, marker="x", linestyle="--", color=line.get_color(), label=f"{server} p95")
        cpu.plot(ns, [statistics.median(lv["server_cpu_ms_per_call_second"] or 0 for lv in groups[(server, n)])
                      for n in ns], marker="o", label=server)
    latency.set(xlabel="concurrent WebRTC calls", ylabel="end of speech -> first reply audio (ms)",
                title="Turn latency")
    latency.set_yscale("log")
    cpu.set(xlabel="concurrent WebRTC calls", ylabel="server CPU ms per call-second", title="Server CPU",
            yscale="log")
    for axes in (latency, cpu):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    vs_n = out / f"{prefix}_vs_n.png"
    figure.savefig(vs_n, dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 4))
    for server in servers:
        values = sorted(x for (s, _), group in groups.items() if s == server for lv in group
                        for x in lv["turn_latencies_ms"])
        if values:
            axes.step(values, [(k + 1) / len(values) for k in range(len(values))], where="post", label=server)
    axes.set(xlabel="end of speech -> first reply audio (ms), all levels", ylabel="share of turns",
             title="Turn latency CDF (WebRTC)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    cdf = out / f"{prefix}_cdf.png"
    figure.savefig(cdf, dpi=110)
    plt.close(figure)
    return [vs_n, cdf]


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    prefix = sys.argv[3] if len(sys.argv) > 3 else "webrtc"
    data = json.loads((run / "webrtc.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    text = [f"Run {data['date']}, commit {data['commit']}, `{data['command']}`", f"Machine: {data['machine']}", "",
            table(data["levels"])]
    (out / f"{prefix}_table.md").write_text("\n".join(text) + "\n")
    for path in plots(data["levels"], out, prefix):
        print(f"wrote {path}")
    print("\n".join(text))


if __name__ == "__main__":
    main()
