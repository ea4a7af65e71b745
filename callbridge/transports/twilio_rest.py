"""Twilio's REST API, for what the media stream cannot do: place an outbound call, hand a live call on.

Unlike its sans-I/O neighbours this module talks to the network, through the `twilio` package's own client
with its asynchronous HTTP client (aiohttp), so a slow Twilio never blocks the event loop. The base URL is
TWILIO_API_URL (tests point it at a local server that speaks Twilio's wire format): the package's `Api`
domain keeps it in `base_url`. The environment's TWILIO_EDGE and TWILIO_REGION are not read, so the URL
configured is the one used.

- `place_call`: `POST /2010-04-01/Accounts/{AccountSid}/Calls.json` with To, From, Url (Twilio asks that URL
  for TwiML once the callee answers; see callbridge.web.telephone) and MachineDetection.
- `transfer`: `POST .../Calls/{CallSid}.json` with Twiml `<Dial>` the number: the call leaves the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

#: Twilio's MachineDetection values: a verdict as soon as known, or (for a machine) after its greeting.
MACHINE_DETECTION = ("Enable", "DetectMessageEnd")

T = TypeVar("T")

#: The package's HTTP client logs each request and its headers at INFO; the callers log what matters.
_quiet = logging.getLogger("callbridge.twilio_rest.http")
_quiet.setLevel(logging.WARNING)


class TwilioRestError(Exception):
    """Twilio refused (`status` is its HTTP status) or could not be reached (`status` is None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def dial_twiml(to: str) -> str:
    """The TwiML that hands a live call on to `to`."""
    response = VoiceResponse()
    response.dial(to)
    return str(response)


class TwilioRest:
    """One process's client for Twilio's REST API; its HTTP session opens on first use, inside the event loop."""

    def __init__(self, account_sid: str, auth_token: str, api_url: str, timeout: float) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.api_url = api_url
        self.timeout = timeout
        self._client: Client | None = None

    def _rest(self) -> Client:
        if self._client is None:
            client = Client(self.account_sid, self.auth_token, environment={},
                            http_client=AsyncTwilioHttpClient(logger=_quiet))
            client.api.base_url = self.api_url
            self._client = client
        return self._client

    async def place_call(self, to: str, from_: str, answer_url: str, machine_detection: str = "") -> str:
        """Dial `to` from `from_`; Twilio POSTs `answer_url` for TwiML once answered. Returns the CallSid."""
        call = await self._request(self._rest().calls.create_async(
            to=to, from_=from_, url=answer_url, method="POST", machine_detection=machine_detection or None))
        if not call.sid:
            raise TwilioRestError("Twilio's answer has no call sid", 502)
        return call.sid

    async def transfer(self, call_sid: str, to: str) -> None:
        """Redirect the live call `call_sid` to TwiML that dials `to`; its media stream then ends."""
        await self._request(self._rest().calls(call_sid).update_async(twiml=dial_twiml(to)))

    async def _request(self, request: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):  # the package's client leaves its own timeout unused
                return await request
        except TwilioRestException as exc:
            raise TwilioRestError(f"Twilio answered {exc.status}: {exc.msg}", exc.status) from None
        except TimeoutError:
            raise TwilioRestError(f"Twilio at {self.api_url} did not answer within {self.timeout:g} s "
                                  "(TWILIO_API_TIMEOUT_SECONDS)") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TwilioRestError(f"cannot reach Twilio at {self.api_url}: {type(exc).__name__}: {exc}") from None
        except ValueError:
            raise TwilioRestError("Twilio's answer is not the JSON of its REST API", 502) from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.http_client.close()  # type: ignore[attr-defined]
            self._client = None
