"""callbridge: a telephony voice-bot bridge (Quart on Hypercorn)."""

from app.server import create_app

__all__ = ["create_app"]
