"""Test-only: make a server process (started with this folder on PYTHONPATH) offer 127.0.0.1 as its ICE host address.

aioice leaves loopback out of its host candidates, so without this a server in a loopback-only network
namespace has no candidate at all, and one outside would offer the machine's real interfaces. The
service itself never patches aioice.
"""

import aioice.ice


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


aioice.ice.get_host_addresses = _loopback_only
