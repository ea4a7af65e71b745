"""The Call's outbound audio since the last point the caller is known to have heard, so that a reply held at a
barge-in resumes where the caller stopped hearing it.

Every playback mark the Call queues is a checkpoint on the tape: a bot's `Mark`, a reply's end, and, when
replies can resume, a resume point every `RESUME_POINT_FRAMES` frames of audio. When the transport reports a
checkpoint heard, the tape forgets everything before it. Holding the tape forgets the marks' wire names (Twilio
echoes every pending mark on `clear`, and the browser socket's timers still fire: those reports are not of
audio heard) and keeps what is queued from then on; replaying it queues what the caller had not heard again,
its checkpoints under new names, so each is reported when the caller really hears it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from callbridge.core.messages import AudioOut, Outbound, PlaybackMark

#: A resume point every 0.5 s of reply audio (25 frames of 20 ms): a resumed reply repeats at most that much
#: (a word or two), for 2 marks a second per talking call on Twilio (each one JSON message out and its echo
#: in, beside 10 media messages out and 50 in). 25 frames are 5 of the PacedWriter's 5-frame messages, so the
#: marks fall between messages and split none.
RESUME_POINT_FRAMES = 25
#: At most a minute of audio is kept unheard: a far end that never confirms marks costs no more memory than that.
MAX_UNHEARD_FRAMES = 3000


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A point in the Call's outbound audio: a resume point, a bot's Mark (`label`: its name) or a reply's end."""

    kind: Literal["resume_point", "bot_mark", "reply_end"]
    reply_id: str
    label: str = ""


class Tape:
    """Puts the Call's outbound audio and checkpoints on its outbox, and keeps those not yet heard."""

    def __init__(self, put: Callable[[Outbound], None], *, resumable: bool) -> None:
        self._put = put
        #: Keep unheard audio and place resume points; without it the tape only names and looks up checkpoints.
        self.resumable = resumable
        self._unheard: deque[AudioOut | Checkpoint] = deque(maxlen=MAX_UNHEARD_FRAMES)
        self._on_wire: dict[str, Checkpoint] = {}  # the name each queued checkpoint has on the outbox
        self._names = itertools.count(1)
        self._frames_since_checkpoint = 0
        self.held = False
        #: Unheard entries dropped at MAX_UNHEARD_FRAMES (the reply ran more than that ahead of the caller): a
        #: replay would skip them, so the reply cannot resume where the caller stopped hearing it.
        self._lost = False

    def play(self, frame: AudioOut, reply_id: str) -> None:
        if self.resumable:
            if self._frames_since_checkpoint >= RESUME_POINT_FRAMES:
                self.checkpoint(Checkpoint("resume_point", reply_id))
            self._keep(frame)
        self._frames_since_checkpoint += 1
        if not self.held:
            self._put(frame)

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        """A playback mark after the audio played so far."""
        self._frames_since_checkpoint = 0
        if self.resumable:
            self._keep(checkpoint)
        if not self.held:
            self._mark(checkpoint, first=True)

    def _keep(self, entry: AudioOut | Checkpoint) -> None:
        self._lost |= len(self._unheard) == self._unheard.maxlen
        self._unheard.append(entry)

    @property
    def can_resume(self) -> bool:
        """Whether a replay now would start where the caller stopped hearing (nothing unheard was dropped)."""
        return self.resumable and not self._lost

    def heard(self, name: str) -> Checkpoint | None:
        """The checkpoint the transport reports heard (None: not one on the wire now); what came before it is
        forgotten."""
        checkpoint = self._on_wire.pop(name, None)
        if checkpoint is not None and checkpoint in self._unheard:  # found near the front: marks come in order
            while self._unheard.popleft() is not checkpoint:
                pass
            self._lost = False  # what follows the point heard is all kept
        return checkpoint

    def hold(self) -> None:
        """The caller talks over the audio (the Call drops what is queued): keep what they had not heard."""
        self.held = True
        self._on_wire.clear()

    def replay(self) -> None:
        """Queue again what the caller had not heard when the tape was held, and go on playing."""
        self.held = False
        for entry in self._unheard:
            if isinstance(entry, AudioOut):
                self._put(entry)
            else:
                self._mark(entry, first=False)

    def clear(self) -> None:
        """The audio is stopped for good: nothing of it will be heard."""
        self.held = False
        self._unheard.clear()
        self._on_wire.clear()
        self._frames_since_checkpoint = 0
        self._lost = False

    def _mark(self, checkpoint: Checkpoint, *, first: bool) -> None:
        # A reply's end keeps its id as its name the first time; checkpoints inside a reply hold a "/"
        # (callbridge.core.messages.ends_reply tells them apart for a far end that counts replies).
        if checkpoint.kind == "reply_end":
            name = checkpoint.reply_id if first else f"{checkpoint.reply_id}.{next(self._names)}"
        else:
            name = f"{checkpoint.reply_id}/{next(self._names)}"
        self._on_wire[name] = checkpoint
        self._put(PlaybackMark(name))

