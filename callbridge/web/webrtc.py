"""WebRTC signalling: `POST /webrtc/offer` takes offers and trickled candidates (callbridge.transports.webrtc).

Refusals: a page from a foreign origin -> 403 and a body that is not JSON -> 415 (callbridge.web.guards);
a bad body, or a modality the bot does not handle (`Bot.modalities`) -> 422; a duplicate id -> 409
`connection_already_exists`; over the limit -> `LIMIT_STATUS_CODE` (429, or 200) with the concurrency body; an
unusable SDP (e.g. no video m-line in a video offer) -> 400. The peer side (aiortc)
lives in callbridge.edge.webrtc and is imported at the first offer. With several workers a candidate may reach
another process than its offer: it is passed on through the registry's commands.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from quart import Blueprint, request

from callbridge.bots.base import Bot
from callbridge.services import Services
from callbridge.sessions.registry import (
    ConcurrencyLimitReached,
    ConnectionAlreadyExists,
    RegistryError,
    ServiceUnavailable,
    UnknownSession,
)
from callbridge.transports.webrtc import Candidate, Offer, OfferError, parse_request
from callbridge.web.guards import guard_browser_api
from callbridge.web.responses import failure

if TYPE_CHECKING:
    from callbridge.edge.webrtc import PeerCall

logger = logging.getLogger("callbridge.webrtc")


def webrtc(services: Services) -> Blueprint:
    routes = Blueprint("webrtc", __name__)
    settings = services.settings
    guard_browser_api(routes, settings)
    live: dict[str, PeerCall] = {}

    async def candidate_here(call_id: str, candidate: Any) -> None:
        from callbridge.edge.webrtc import parse_candidate

        peer = live.get(call_id)
        if peer is None:
            raise UnknownSession(f"no WebRTC call with webrtc_id {call_id!r} here")
        await peer.add_candidate(parse_candidate(candidate))

    services.registry.on_command("ice", candidate_here)

    @routes.after_app_serving
    async def close_peer_connections() -> None:
        """Shutdown: close every peer connection, which ends its call and frees its slot (nothing else would
        tell the browser: without this it notices only when ICE consent expires, ~30 s later)."""
        await asyncio.gather(*(peer.end("server shutting down") for peer in list(live.values())))

    @routes.get("/webrtc/config")
    async def config() -> tuple[dict[str, Any], int]:
        """The ICE servers this service uses (ICE_SERVERS), so a browser client relays the same way."""
        return {"iceServers": [server.model_dump(exclude_none=True) for server in settings.ice_servers]}, 200

    @routes.post("/webrtc/offer")
    async def offer() -> tuple[dict[str, Any], int]:
        try:
            parsed = parse_request(await request.get_json(silent=True), request.args.get("mode"),
                                   request.args.get("modality"))
            if isinstance(parsed, Candidate):
                await add_candidate(parsed)
                return {"status": "success"}, 200
            return await answer(parsed)
        except OfferError as exc:
            return failure(exc.status, str(exc))

    async def answer(offer: Offer) -> tuple[dict[str, Any], int]:
        from callbridge.edge.opus import VOICE_RATE, OpusError, libopus
        from callbridge.edge.webrtc import PeerCall

        try:
            libopus()
        except OpusError as exc:  # the service's set-up, not the offer: said on every offer until installed
            logger.error("webrtc offer %s refused: %s", offer.call_id, exc)
            raise OfferError(str(exc), 503) from None
        handled = getattr(services.bot_factory, "modalities", Bot.modalities)
        if offer.modality not in handled:
            raise OfferError(f"this bot handles {', '.join(sorted(handled))} calls, not {offer.modality}: offer one "
                             "of those modalities or run a bot that handles it (BOT=mirror handles video)")
        try:
            call = await services.open_call(offer.call_id, "webrtc", inbound_rate=VOICE_RATE, outbound_rate=VOICE_RATE,
                                            parameters={"mode": offer.mode, "modality": offer.modality})
        except RegistryError as exc:
            logger.warning("webrtc offer %s refused: %s", offer.call_id, exc)
            return exc.body(), refusal_status(exc)
        peer = PeerCall(call, services, offer.mode, live, offer.modality)
        try:
            description = await peer.answer(offer.sdp)
        except Exception as exc:
            logger.warning("webrtc offer %s: cannot answer: %s", offer.call_id, exc)
            await peer.end("offer refused")
            raise OfferError(f"cannot answer this offer: {exc}", 400) from None
        return {"sdp": description.sdp, "type": description.type}, 200

    def refusal_status(exc: RegistryError) -> int:
        if isinstance(exc, ConcurrencyLimitReached):
            return settings.limit_status_code
        if isinstance(exc, ConnectionAlreadyExists):
            return 409
        return 503

    async def add_candidate(candidate: Candidate) -> None:
        """A trickled ICE candidate for a call whose offer was sent, wherever the call runs."""
        try:
            await services.registry.send_command(candidate.call_id, "ice", candidate.candidate)
        except UnknownSession:
            raise OfferError(f"no WebRTC call with webrtc_id {candidate.call_id!r}: send the offer first",
                             404) from None
        except ServiceUnavailable as exc:
            raise OfferError(f"cannot pass the candidate to the process holding {candidate.call_id!r}: {exc}",
                             503) from None

    return routes
