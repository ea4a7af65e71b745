"""Transports translate wire messages to and from the call runtime; they hold no turn logic."""
