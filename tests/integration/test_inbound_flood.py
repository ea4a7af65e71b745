"""Audio faster than real time: browser sockets flooding the server are closed, cost it bounded memory, and a
healthy call beside them is heard in full."""

from __future__ import annotations

import asyncio
import json
import sys

from callbridge.simulator import Pause, SimulatedCaller, Speak, WaitForReply
from tests.integration.conftest import ROOT
from tests.speech import peak_correlation, speech

RATE = 8000
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman and his clever cat."
FLOOD_SECONDS = 10
CAP_SECONDS = 2
#: The cap keeps 2 s of audio (32 KB) per flooded call; the rest is allocator slack and messages in flight.
#: Before the cap, one such flooding client grew the server by over 1 GB in 10 s.
RSS_GROWTH_BOUND = 50 * 1024 * 1024


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def test_flooding_sockets_cost_bounded_memory_and_a_healthy_echo_stays_whole(server_factory):
    server = server_factory(inbound_backlog_seconds=CAP_SECONDS)
    said = speech(STORY, RATE)
    warm_up = await SimulatedCaller(server.url, [Speak(speech("Hello there.", RATE)), WaitForReply("heard")]).run()
    assert warm_up.reply_starts  # what a first call loads is not counted below
    before = vm_rss(server.process.pid)
    flooder = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.flooder", server.url, str(FLOOD_SECONDS), "flood-1", "flood-2",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    peak = before

    async def watch_rss() -> None:
        nonlocal peak
        while True:
            peak = max(peak, vm_rss(server.process.pid))
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch_rss())
    try:
        await asyncio.sleep(1.0)  # the flood is on
        report = await SimulatedCaller(server.url, [Pause(0.3), Speak(said), WaitForReply("heard")]).run()
        output, _ = await asyncio.wait_for(flooder.communicate(), FLOOD_SECONDS + 30)
    finally:
        watcher.cancel()
        if flooder.returncode is None:
            flooder.kill()
    assert flooder.returncode == 0
    # The healthy call: its whole turn echoed back, once, on time.
    assert len(report.reply_starts) == 1
    assert peak_correlation(report.heard_audio, said) > 0.9
    assert abs(len(report.heard_audio) / RATE - (len(said) / RATE + 0.2)) < 0.15
    assert report.stall_seconds == 0, f"stalled {report.stall_seconds * 1000:.0f} ms"
    # The flood: each socket closed with 1008 once more than the cap of its audio waited, and told why; the
    # client then opened another (its last one may have ended by its own stop, 1000).
    for flood in (json.loads(line) for line in output.decode().splitlines()):
        closed_for_flooding = flood["close_codes"].get("1008", 0)
        assert closed_for_flooding >= max(2, flood["sockets"] - 1), flood["close_codes"]
        assert set(flood["close_codes"]) <= {"1008", "1000"}, flood["close_codes"]
        assert len(flood["errors"]) >= closed_for_flooding
        assert all("faster than real time" in error and "INBOUND_BACKLOG_SECONDS" in error for error in flood["errors"])
        assert any(f"websocket {flood['name']}-1: caller audio arrives faster than real time" in line
                   and "closing with 1008" in line for line in server.logs().splitlines())
    growth = peak - before
    assert growth < RSS_GROWTH_BOUND, f"the server grew by {growth / 2**20:.0f} MB"
