"""Video bots, FastRTC's video handlers as the bot contract.

Frames are (H, W, 3) uint8 numpy arrays in BGR order, as FastRTC (and OpenCV) hand them. A `VideoBot`:

- `transform(frame, *inputs)` (send-receive and send): called with the camera's latest frame, at most
  VIDEO_FPS times a second; frames that arrive while it runs are skipped, never queued. It returns the frame to
  show (send-receive), `(frame, AdditionalOutputs(...))`, `AdditionalOutputs(...)` alone or None (show nothing
  new). A sync `transform` runs in a worker thread, one frame at a time; an `async def` one on the event loop.
- `frames(*inputs)` (receive: no camera): a generator (sync or async) of the same results, shown at
  VIDEO_FPS; the call's video ends when it does.

A video bot handles the "video" modality. One that also lists "audio-video" in `modalities` gets turns as any
bot (`reply`, with `turn.frame`), while its `transform` keeps changing the live video: the outbound track shows
whichever picture came last, a transformed frame or a `Frame` the reply yielded.

`video_handler(fn)` makes a VideoBot class of a plain `fn(frame, *inputs)` (receive mode: `fn(*inputs)`, a
generator), so `BOT=module:attr` loads it through the loader's Bot-subclass path. As with audio handlers, a
parameter named beyond the frame (any, in receive mode) asks the client for additional inputs (`send_input`):
until they are set the camera is shown as it is (receive mode: nothing is shown), then frames get the latest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, ClassVar

import numpy as np

from callbridge.bots.base import AdditionalOutputs, Bot, CallInfo
from callbridge.bots.function import declares_inputs

VideoResult = np.ndarray | tuple[np.ndarray | None, AdditionalOutputs] | AdditionalOutputs | None


class BadVideoResult(TypeError):
    """A handler returned something that is not a frame, AdditionalOutputs or None."""


def split_result(result: Any) -> tuple[np.ndarray | None, AdditionalOutputs | None]:
    """A handler's result as (frame to show or None, outputs or None); BadVideoResult says what is wrong."""
    outputs = None
    if isinstance(result, AdditionalOutputs):
        return None, result
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], AdditionalOutputs):
        result, outputs = result
    if result is None:
        return None, outputs
    if not isinstance(result, np.ndarray):
        raise BadVideoResult(f"a video handler returned a {type(result).__name__}: return an (H, W, 3) uint8 "
                             "ndarray, (frame, AdditionalOutputs), AdditionalOutputs or None")
    if result.ndim != 3 or result.shape[2] != 3 or result.dtype != np.uint8:
        raise BadVideoResult(f"a video handler returned an array of shape {result.shape} and dtype {result.dtype}: "
                             "a frame is (H, W, 3) uint8")
    return result, outputs


class VideoBot(Bot):
    """Base class for video bots: override `transform` (camera calls) and/or `frames` (receive mode)."""

    modalities: ClassVar[frozenset[str]] = frozenset({"video"})

    def transform(self, frame: np.ndarray, *inputs: Any) -> VideoResult | Awaitable[VideoResult]:
        """The picture to show for the camera's latest frame; by default the frame itself."""
        return frame

    def frames(self, *inputs: Any) -> Iterator[VideoResult] | AsyncIterator[VideoResult]:
        """Receive mode: the pictures to show, one per 1/VIDEO_FPS s."""
        raise NotImplementedError(f"{type(self).__name__} shows nothing without a camera: define frames()")


def video_handler(fn: Callable[..., Any], *, modalities: frozenset[str] = frozenset({"video"})) -> type[VideoBot]:
    """A VideoBot class running `fn(frame, *inputs)` per frame, and `fn(*inputs)` in receive mode."""

    class FunctionVideoBot(VideoBot):
        def __init__(self, call: CallInfo) -> None:
            super().__init__(call)
            # In receive mode `fn` gets no frame: any parameter it names is an input.
            self.wants_inputs = declares_inputs(fn, media=0 if call.parameters.get("mode") == "receive" else 1)

        def transform(self, frame: np.ndarray, *inputs: Any) -> Any:
            return fn(frame, *inputs)

        def frames(self, *inputs: Any) -> Any:
            return fn(*inputs)

    FunctionVideoBot.modalities = modalities
    FunctionVideoBot.__name__ = FunctionVideoBot.__qualname__ = f"video_handler({getattr(fn, '__name__', fn)})"
    return FunctionVideoBot
