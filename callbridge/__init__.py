"""callbridge: a telephony voice-bot bridge (Quart on Hypercorn)."""

from callbridge.serve import create_app

__all__ = ["create_app"]
