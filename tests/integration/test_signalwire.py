"""SignalWire's cXML streams on the Twilio path: its `start`, as SignalWire sends it, opens a call like Twilio's."""

from __future__ import annotations

import json
import uuid

from callbridge.core.messages import ends_reply
from callbridge.simulator import SimulatedCaller, Speak, WaitForReply
from tests.speech import peak_correlation, speech

RATE = 8000
HELLO = "Hello, this is a test call, can you hear me?"


class SignalWireCaller(SimulatedCaller):
    """SignalWire's cXML stream is Twilio's protocol; its `start` differs in its ids (UUIDs, not MZ/CA sids), its
    track names (inbound_track) and an extra mediaFormat.channels, and its `connected` names another version."""

    def _answer(self) -> tuple[str, dict[str, str], list[str]]:
        ws_url, headers, opening = super()._answer()
        parameters = json.loads(opening[-1])["start"]["customParameters"]
        self.stream_sid = str(uuid.uuid4())
        start = json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
            "start": {"accountSid": str(uuid.uuid4()), "streamSid": self.stream_sid, "callSid": self._call_sid,
                      "tracks": ["inbound_track"], "customParameters": parameters,
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        })
        return ws_url, headers, [json.dumps({"event": "connected", "protocol": "Call", "version": "0.2.0"}), start]

    def _media_message(self, chunk: int, payload: str) -> str:
        return json.dumps({"event": "media", "sequenceNumber": str(chunk + 1), "streamSid": self.stream_sid,
                           "media": {"track": "inbound_track", "chunk": str(chunk), "timestamp": str(chunk * 20),
                                     "payload": payload}})


async def test_a_signalwire_start_works_on_the_twilio_path(echo_server):
    said = speech(HELLO, RATE)
    caller = SignalWireCaller(echo_server.url, [Speak(said), WaitForReply("heard")],
                              webhook_form={"CallSid": str(uuid.uuid4()), "AccountSid": str(uuid.uuid4()),
                                            "ApiVersion": "2010-04-01"})
    report = await caller.run()
    assert report.close_code == 1000 and len(report.reply_starts) == 1
    assert peak_correlation(report.heard_audio, said) > 0.9
    assert report.marks_received == report.marks_echoed
    assert len([name for name in report.marks_echoed if ends_reply(name)]) == 1
    assert f"call {caller.stream_sid} started on twilio" in echo_server.logs()
