"""A WebRTC call's video on aiortc: camera frames to the bot, the bot's pictures back (callbridge.bots.video).

Inbound, every decoded camera frame lands in a `LatestSlot` that holds only the newest: the bot is handed
the latest frame at most VIDEO_FPS times a second, and frames that arrive meanwhile (a slow handler, a fast
camera) are skipped and counted, never queued, so the picture never lags behind the camera. The frame's
conversion to an (H, W, 3) uint8 BGR array, a sync handler, and the conversion of its result back to a video
frame run in a worker thread, one frame at a time. In audio-video calls each handed frame is also the Call's
latest (Turn.frame).

Outbound, `PictureTrack` sends the latest picture at VIDEO_FPS (from the first one on): a transformed frame,
a frame from `frames()` in receive mode, or a `Frame` an audio-video reply yielded. A handler that raises or
returns something else costs that frame only: the client gets an `error` message (once per kind of mistake)
and the call goes on.
"""

from __future__ import annotations

import asyncio
import fractions
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from callbridge.bots.base import AdditionalOutputs
from callbridge.bots.function import iterate_in_thread
from callbridge.bots.video import VideoBot, split_result
from callbridge.core.call import Call
from callbridge.core.messages import ClientMessage
from callbridge.transports.webrtc import Mode, OfferError

logger = logging.getLogger("callbridge.webrtc")

VIDEO_CLOCK_RATE = 90000
TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds the newest item only: `put` over one not yet taken replaces it and counts it skipped."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._ready = asyncio.Event()
        self.skipped = 0

    def put(self, item: T) -> None:
        if self._item is not None:
            self.skipped += 1
        self._item = item
        self._ready.set()

    async def take(self) -> T:
        while self._item is None:
            self._ready.clear()
            await self._ready.wait()
        item, self._item = self._item, None
        return item


def to_picture(image: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")


class PictureTrack(MediaStreamTrack):
    """The bot's video: the latest picture, paced at `fps` from the first picture on."""

    kind = "video"

    def __init__(self, fps: float) -> None:
        super().__init__()
        self._period = 1.0 / fps
        self._picture: av.VideoFrame | None = None
        self._shown = asyncio.Event()
        self._start: float | None = None
        self._sent = 0

    def show(self, picture: av.VideoFrame) -> None:
        self._picture = picture
        self._shown.set()

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._shown.wait()
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            delay = self._start + self._sent * self._period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        picture = self._picture
        assert picture is not None
        # The encoder is done with the previous frame before aiortc asks for the next: one picture may go
        # out several times with new timestamps.
        picture.pts = round(self._sent * self._period * VIDEO_CLOCK_RATE)
        picture.time_base = TIME_BASE
        self._sent += 1
        return picture


class VideoLink:
    """One call's video: the transceiver in the answer, the camera to the bot, and the bot's pictures out."""

    def __init__(self, call: Call, mode: Mode, fps: float, end: Callable[[str], object] | None) -> None:
        """`end` ends the call when a receive-mode bot's pictures end (video only; None in audio-video calls,
        whose audio goes on)."""
        self.call = call
        self.mode = mode
        self.fps = fps
        self._end = end
        bot = call.bot
        self.bot: VideoBot | None = bot if isinstance(bot, VideoBot) else None  # None: pictures come from replies
        self.track: PictureTrack | None = None
        self.camera: LatestSlot[av.VideoFrame] = LatestSlot()
        self.handed = 0
        self._told: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def answer(self, pc: RTCPeerConnection) -> None:
        """Set the offer's video transceiver for the mode; OfferError when the offer has none."""
        video = [t for t in pc.getTransceivers() if t.kind == "video"]
        if not video:
            raise OfferError("the offer has no video: add a camera track or a recvonly video transceiver")
        if self.mode == "send":
            video[0].direction = "recvonly"
            return
        self.track = PictureTrack(self.fps)
        pc.addTrack(self.track)
        if self.mode == "receive":
            video[0].direction = "sendonly"

    def on_track(self, track: MediaStreamTrack) -> None:
        if self.mode != "receive":
            self._spawn(self._receive(track))

    def start(self) -> None:
        """The connection is up: hand frames to the bot (or, in receive mode, show what it makes)."""
        if self.mode != "receive":
            self._spawn(self._hand_frames())
        elif self.bot is not None:
            self._spawn(self._show_frames(self.bot))

    def show(self, image: np.ndarray) -> None:
        """A picture an audio-video reply yielded (`FrameOut`); nowhere to show it in mode `send`."""
        if self.track is not None:
            self.track.show(to_picture(image))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.track is not None:
            self.track.stop()
        logger.info("webrtc %s: video: %d frames handed to the bot, %d skipped", self.call.id, self.handed,
                    self.camera.skipped)

    # -- camera to the bot -------------------------------------------------------------------------

    async def _receive(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                self.camera.put(await track.recv())
            except MediaStreamError:
                return

    async def _hand_frames(self) -> None:
        """The latest camera frame to the bot, at most `fps` a second, one at a time."""
        loop = asyncio.get_running_loop()
        if self._wants_inputs():
            self.call.send(ClientMessage("send_input"))
        while True:
            frame = await self.camera.take()
            due = loop.time() + 1.0 / self.fps
            self.handed += 1
            inputs = self.call.session.inputs
            image, result = await asyncio.to_thread(self._transform, frame, inputs)
            self.call.push_frame(image)
            if inspect.isawaitable(result):  # an async transform: awaited here, on the loop
                result = await self._guarded(result)
            self._show_result(result)
            await asyncio.sleep(max(0.0, due - loop.time()))

    def _transform(self, frame: av.VideoFrame, inputs: tuple[Any, ...]) -> tuple[np.ndarray, Any]:
        """In the worker thread: the frame as an array, and the bot's result for it (a sync transform's as a
        picture, ready to send)."""
        image = frame.to_ndarray(format="bgr24")
        if self.bot is None:
            return image, None  # no live transform: pictures come from the replies
        if self._wants_inputs() and not inputs:
            return image, (frame, None)  # inputs wanted, none set yet: the camera is shown as it is (as FastRTC)
        try:
            result = self.bot.transform(image, *inputs)
        except Exception as exc:
            return image, exc
        return image, result if inspect.isawaitable(result) else self._prepare(result)

    def _prepare(self, result: Any) -> Any:
        """A result as (picture or None, outputs or None), or the exception that says what is wrong with it."""
        try:
            image, outputs = split_result(result)
        except TypeError as exc:
            return exc
        return (to_picture(image) if image is not None else None), outputs

    async def _guarded(self, result: Any) -> Any:
        try:
            return self._prepare(await result)
        except Exception as exc:
            return exc

    def _show_result(self, result: Any) -> None:
        if result is None:
            return
        if isinstance(result, Exception):
            self._mistake(result)
            return
        picture, outputs = result
        if picture is not None and self.track is not None:
            self.track.show(picture)
        if isinstance(outputs, AdditionalOutputs):
            self.call.publish(outputs)

    def _mistake(self, exc: Exception) -> None:
        """A handler's exception or bad result: told once per kind to the client and the log; the call goes on."""
        kind = type(exc).__name__
        if kind in self._told:
            return
        self._told.add(kind)
        self.call.observer.bot_error()
        message = f"video handler error: {kind}: {exc}"
        logger.warning("webrtc %s: %s", self.call.id, message, exc_info=exc,
                       extra={"event": "bot_error", "call_id": self.call.id, "error": message})
        self.call.send(ClientMessage("error", message))

    # -- receive mode ------------------------------------------------------------------------------

    async def _show_frames(self, bot: VideoBot) -> None:
        """`bot.frames(*inputs)`, one result per 1/fps s; the call ends when they do (or fail)."""
        loop = asyncio.get_running_loop()
        inputs = await self._receive_inputs()
        try:
            made = bot.frames(*inputs)
            results = made if inspect.isasyncgen(made) else iterate_in_thread(made)
            async for result in results:
                due = loop.time() + 1.0 / self.fps
                self.handed += 1
                self._show_result(self._prepare(result))
                await asyncio.sleep(max(0.0, due - loop.time()))
        except Exception as exc:
            self._mistake(exc)
        if self._end is not None:
            self._end("the bot's video ended")

    async def _receive_inputs(self) -> tuple[Any, ...]:
        """Receive mode shows nothing before the inputs a bot wants are set (asked for once)."""
        session = self.call.session
        if not self._wants_inputs() or session.inputs:
            return session.inputs
        self.call.send(ClientMessage("send_input"))
        while not session.inputs:
            await session.take_input(3600.0)
        return session.inputs

    def _wants_inputs(self) -> bool:
        return self.bot is not None and self.bot.wants_inputs

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
