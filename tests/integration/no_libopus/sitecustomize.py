"""Test-only: a server process started with this folder on PYTHONPATH finds no libopus, as on a machine
without Debian's libopus0, and offers 127.0.0.1 as its only ICE host address (one sitecustomize runs)."""

import ctypes.util

import aioice.ice

_find_library = ctypes.util.find_library


def _no_opus(name: str) -> str | None:
    return None if name == "opus" else _find_library(name)


ctypes.util.find_library = _no_opus
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
