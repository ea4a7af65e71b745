"""Cold start: process start -> /readyz 200, and the idle RSS once ready, for one worker.

    .venv/bin/python bench/cold_start.py                              # this tree, BOT=echo, 5 runs
    .venv/bin/python bench/cold_start.py --tree /tmp/old --module app # an older tree (git worktree), alternated
    .venv/bin/python bench/cold_start.py --tree /tmp/old --module app --against . --runs 3

With --against, the two trees take turns (A B A B ...): this machine's speed swings from minute to minute.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def once(tree: Path, module: str, bot: str) -> tuple[float, float]:
    """(seconds from process start to /readyz 200, RSS in MB one second later)."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "LOG_LEVEL": "WARNING", "BOT": bot}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", module], cwd=tree, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{tree}: the server exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.01)
        ready = time.monotonic() - started
        time.sleep(1.0)
        with open(f"/proc/{process.pid}/status") as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
        return ready, rss
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--module", default="callbridge", help="what `python -m` runs in that tree")
    parser.add_argument("--against", type=Path, help="a second tree (callbridge layout), run in turns")
    parser.add_argument("--bot", default="echo")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    trees = [(args.tree, args.module)] + ([(args.against, "callbridge")] if args.against else [])
    results: dict[Path, list[tuple[float, float]]] = {tree: [] for tree, _ in trees}
    for run in range(args.runs):
        for tree, module in trees:
            ready, rss = once(tree.resolve(), module, args.bot)
            results[tree].append((ready, rss))
            print(f"run {run} {tree}: ready {ready:.2f} s, RSS {rss:.0f} MB", flush=True)
    for tree, rows in results.items():
        print(f"{tree}: median ready {statistics.median(r for r, _ in rows):.2f} s, "
              f"RSS {statistics.median(m for _, m in rows):.0f} MB")


if __name__ == "__main__":
    main()
