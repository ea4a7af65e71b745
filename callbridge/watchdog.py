"""The loop-lag watchdog: names the call and the bot code that blocked the event loop.

One event loop carries every call of a process, so a blocking call in a bot (a synchronous HTTP request, a
`time.sleep`, a model run in an `async def`) stalls every other call's audio. The loop stamps a heartbeat
every `interval`; a thread beside it checks the stamp, and when the loop has been silent longer than the
threshold it reads the loop thread's stack at that moment: the innermost frame of the bot's code is the
culprit, the Call it runs under is the call. One warning per stall.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from types import FrameType

from callbridge.core.call import Call

logger = logging.getLogger("callbridge.watchdog")

#: callbridge's own code and the libraries around it: the culprit is the innermost frame outside these.
_RUNTIME_PATHS = ("/callbridge/core/", "/callbridge/edge/", "/callbridge/web/", "/callbridge/sessions/",
                  "/asyncio/", "/threading.py", "/selectors.py", "/concurrent/")


class LoopWatchdog:
    def __init__(self, threshold: float, interval: float = 0.05) -> None:
        self.threshold = threshold
        self.interval = interval
        self.stalls = 0
        self._beat = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._heartbeat()
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None:
            self._thread.join(1.0)

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        assert self._loop is not None
        self._timer = self._loop.call_later(self.interval, self._heartbeat)

    def _watch(self) -> None:
        reported = 0.0  # the heartbeat of the stall already reported
        while not self._stop.wait(self.interval):
            beat = self._beat
            silent = time.monotonic() - beat
            if silent < self.threshold or beat == reported:
                continue
            reported = beat
            self.stalls += 1
            frame = sys._current_frames().get(self._loop_thread)
            call_id, culprit = blame(frame)
            logger.warning("the event loop has been blocked for %.0f ms (every call stalls) by %s%s; run blocking "
                           "code in a sync generator or with asyncio.to_thread", 1000 * silent, culprit,
                           f" in call {call_id}" if call_id else "",
                           extra={"event": "loop_blocked", "call_id": call_id or "-", "seconds": round(silent, 3)})


def blame(frame: FrameType | None) -> tuple[str, str]:
    """(the id of the Call whose bot is running in this stack, or "", the innermost frame outside the runtime)."""
    call_id, culprit = "", ""
    while frame is not None:
        code = frame.f_code
        if not culprit and not any(part in code.co_filename for part in _RUNTIME_PATHS):
            culprit = f"{code.co_name} ({code.co_filename}:{frame.f_lineno})"
        owner = frame.f_locals.get("self")
        if not call_id and isinstance(owner, Call):
            call_id = owner.id
        frame = frame.f_back
    return call_id, culprit or "callbridge itself"
