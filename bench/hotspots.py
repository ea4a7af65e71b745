"""Where callbridge spends its CPU under load: py-spy samples, grouped into the pipeline's stages.

`record` attaches py-spy to the running server (non-blocking, so the server is never paused) for the
length of a load run and writes raw collapsed stacks. `summarise` reads them: time per pipeline stage,
per function (self and inclusive), and `write_markdown` ranks the stages with what to do about each.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

#: Pipeline stages, first match wins, matched against the "function (file)" frames of a stack (see `_matches`).
#: Each has the advice that applies when it leads the profile.
STAGES: list[tuple[str, tuple[str, ...], str]] = [
    ("VAD inference (onnxruntime session.run)", ("OnnxVad.infer_rows (callbridge/core/vad.py) > Session.run",),
     "Batch the VAD across calls: one `session.run` per tick for every call with a full 32 ms window, state "
     "kept per call (design.md measured ~160-190 µs per window alone, ~40-70 µs per call batched), and run "
     "it off the event loop (onnxruntime releases the GIL)."),
    ("inbound resampling", ("Resampler.process (callbridge/codec/resample.py) < Call.push_audio",),
     "Skip resampling when the VAD runs at the wire rate (8 kHz), or keep it allocation-free."),
    ("turn detection (windowing, bookkeeping)", ("callbridge/core/turns.py", "Call.push_audio", "Call._on_"),
     "Allocation-light per-frame work: avoid per-window np.concatenate/np.array copies in TurnDetector.push."),
    ("VAD input/state shuffling (numpy around the model)", ("callbridge/core/vad.py",),
     "Allocation-light per-frame work: each call's state and context live in rows of shared arrays "
     "(callbridge.core.vad.StateRows); what is left is one gather and one scatter per batch."),
    ("Twilio JSON parse + base64/µ-law decode", ("parse_message", "decode_payload", "json/decoder.py",
                                                 "json/__init__.py", "ulaw_decode"),
     "Lean Twilio path: find the payload without a full json.loads (or use a faster parser), decode base64 "
     "and µ-law into preallocated buffers."),
    ("outbound encode (µ-law/base64/JSON)", ("encode_payload", "ulaw_encode", "json/encoder.py"),
     "Lean Twilio path: encode each 20 ms frame once, format the message without json.dumps."),
    ("bot reply and outbox (echo, resampling, chunking)", ("Call._speak", "Call._queue_audio", "Call._outputs",
                                                           "Rechunker", "Outbox", "bots/"),
     "Reply-side work runs once per turn; resample whole replies at once, queue fewer, larger items."),
    ("WebSocket framing + ASGI (hypercorn, wsproto, quart)", ("hypercorn/", "wsproto/", "quart/", "h11/"),
     "Per message, h11/wsproto parse the frame (wsproto unmasks every inbound frame in pure Python), Quart "
     "queues it for the handler, and the reverse on every send. Fewer messages (see the event loop), or a "
     "leaner stack for the media socket (a bare ASGI route, C-accelerated framing)."),
    ("transport glue (callbridge/transports and edge)", ("callbridge/transports/", "callbridge/edge/media.py"),
     "Per-frame Python in the transports: fewer awaits and checks per message."),
    ("event loop: uvloop's native loop and the C work under no Python frame", ("leaf:asyncio/", "leaf:heapq",
                                                                              "leaf:selectors.py"),
     "py-spy puts here whatever runs under the event loop outside a Python frame. `perf record` at 160 calls "
     "(bench/results/history.md, 2026-11-30) showed the event-loop thread mostly in the interpreter (libpython "
     "67%: object churn of callbacks, futures, task steps), the kernel's socket I/O 9%, uvloop itself 4.5%: "
     "fewer Python-level hops per message (callbacks instead of tasks, fewer awaits), not fewer syscalls."),
]
#: Innermost frames of threads that wait: py-spy cannot always tell a thread blocked in C (a lock, a queue) from
#: one that runs, so these count as idle.
IDLE = ("EpollSelector.select", "select (selectors.py", "_worker (concurrent/futures/thread.py",
        "wait (threading.py", "Condition.wait (threading.py", "Event.wait (threading.py", "get (queue.py")


def record(pid: int, duration: float, out: Path, rate: int = 100) -> subprocess.Popen[bytes]:
    """Start py-spy on `pid` and its subprocesses (callbridge's workers) for `duration` seconds; the caller
    waits for the returned process."""
    py_spy = Path(sys.executable).with_name("py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--subprocesses", "--duration", str(round(duration)),
         "--rate", str(rate), "--nonblocking", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


@dataclass
class Profile:
    samples: int = 0
    idle: int = 0
    threads: Counter[str] = field(default_factory=Counter)  # busy samples: "main" (the event loop) or "worker"
    stages: Counter[str] = field(default_factory=Counter)
    main_stages: Counter[str] = field(default_factory=Counter)  # the same, on the event loop's thread only
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)

    @property
    def busy(self) -> int:
        return self.samples - self.idle


def _frame_key(frame: str) -> str:
    """'function (file)' without the line number."""
    match = FRAME.match(frame)
    return f"{match['name']} ({match['file']})" if match else frame


def _matches(pattern: str, keys: list[str]) -> bool:
    """A pattern is a substring of some frame; `leaf:X` of the innermost frame only; `A > B`: B runs (directly
    or not) under A, and `A < B`: A runs under B."""
    if pattern.startswith("leaf:"):
        return pattern[5:] in keys[-1]
    if " > " in pattern or " < " in pattern:
        if " > " in pattern:
            outer, inner = pattern.split(" > ")
        else:
            inner, outer = pattern.split(" < ")
        for i, key in enumerate(keys):
            if outer in key:
                return any(inner in later for later in keys[i + 1 :])
        return False
    return any(pattern in key for key in keys)


def stage_of(keys: list[str]) -> str:
    for name, patterns, _ in STAGES:
        if any(_matches(p, keys) for p in patterns):
            return name
    return "other"


def summarise(raw: Path) -> Profile:
    profile = Profile()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # With --subprocesses each stack starts with "process PID:<command line>" frames (the supervisor, the
        # worker): not code.
        keys = [_frame_key(f) for f in stack.split(";") if not f.startswith("process ")]
        if not keys:
            continue
        profile.samples += count
        if any(marker in keys[-1] for marker in IDLE):
            profile.idle += count
            continue
        thread = "worker" if "Thread._bootstrap (threading.py)" in keys[0] else "main"
        stage = stage_of(keys)
        profile.threads[thread] += count
        profile.stages[stage] += count
        if thread == "main":
            profile.main_stages[stage] += count
        profile.self_time[keys[-1]] += count
        for key in set(keys):
            profile.inclusive[key] += count
    return profile


def describe_run(level: dict[str, Any], date: str, versions: str, raw: Path) -> list[str]:
    """The lines that say what was profiled: the load level's numbers, the code version, the raw file."""
    return [
        f"py-spy 100 Hz, non-blocking, over a {level['calls']}-call load run ({date}, "
        f"{versions.split(' (hypercorn')[0]}).",
        f"During the run: server {level['server_cores']} cores, {level['server_cpu_ms_per_call_second']} ms CPU "
        f"per call-second, turn p50/p95 {level['turn_p50_ms']}/{level['turn_p95_ms']} ms, "
        f"{level['answered']}/{level['call_count']} calls answered (py-spy itself costs a little CPU).",
        f"Raw stacks: bench/work/{raw.name} (not committed).",
    ]


def write_markdown(profile: Profile, path: Path, context: list[str], top: int = 20) -> None:
    busy = max(1, profile.busy)

    def pct(count: int) -> str:
        return f"{100 * count / busy:.1f}%"

    advice = {name: text for name, _, text in STAGES}
    ranked = profile.main_stages.most_common()
    lines = ["# callbridge under load: where the CPU goes", "", *context, "",
             f"{profile.samples} samples, {profile.idle} idle (waiting), {profile.busy} busy; percentages are of "
             "busy samples, all threads together.", "",
             f"Threads: the event loop's thread {pct(profile.threads['main'])}, worker threads (the thread pool "
             f"that runs the batched VAD with VAD_THREAD=thread) {pct(profile.threads['worker'])}. "
             + ("Python code runs one thread at a time and onnxruntime releases the GIL, so the event loop's "
                "thread alone is capped at one core: it is what runs out first." if profile.threads["worker"]
                else "The VAD's inference ran on the event loop (VAD_THREAD=loop, the default with several "
                     "workers), so everything here shares its one core."), "",
             "## By pipeline stage", "", "| stage | all threads | on the event loop's thread |",
             "| --- | ---: | ---: |"]
    lines += [f"| {name} | {pct(count)} | {pct(profile.main_stages[name])} |"
              for name, count in profile.stages.most_common()]
    lines += ["", "## Recommendation: the stages that load the event loop's thread most, in order", ""]
    lines += [f"{n}. **{name}** ({pct(count)}): {advice.get(name, 'Look at the functions below.')}"
              for n, (name, count) in enumerate(ranked[:4], start=1)]
    lines += ["", f"## Top {top} functions by self time", "", "| function (file) | self |", "| --- | ---: |"]
    lines += [f"| `{key}` | {pct(count)} |" for key, count in profile.self_time.most_common(top)]
    lines += ["", f"## Top {top} callbridge functions by inclusive time", "",
              "| function (file) | inclusive |", "| --- | ---: |"]
    ours = [(k, c) for k, c in profile.inclusive.most_common()
            if re.search(r"\((app|codec|bots)/", k)][:top]
    lines += [f"| `{key}` | {pct(count)} |" for key, count in ours]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    """`python bench/hotspots.py RAW [LOAD_JSON]`: rewrite profile.md next to LOAD_JSON from raw py-spy stacks."""
    import json

    raw = Path(sys.argv[1])
    data_path = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent / "results" / "load.json"
    data = json.loads(data_path.read_text())
    context = describe_run(data["profile"], data["date"], data["versions"], raw)
    write_markdown(summarise(raw), data_path.parent / "profile.md", context)


if __name__ == "__main__":
    main()
