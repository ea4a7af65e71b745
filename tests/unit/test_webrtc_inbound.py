"""The caller's audio on its way in: packets handed on in arrival order (the shortcut past aiortc's receive path
itself: tests/integration/test_webrtc_shortcut.py)."""

from __future__ import annotations

from callbridge.edge.inbound import MAX_CONCEALED, REORDER_PACKETS, ArrivalOrder


def test_packets_go_on_as_soon_as_they_are_next() -> None:
    order = ArrivalOrder(65534)
    assert order.add(65534, b"a") == [b"a"]
    assert order.add(0, b"c") == []  # 65535 is late: 0 waits for it (across the wrap)
    assert order.add(65535, b"b") == [b"b", b"c"]
    assert order.add(65535, b"b") == []  # a repeat is dropped
    assert order.add(1, b"d") == [b"d"]


def test_a_lost_packet_is_given_up_once_others_wait_behind_it() -> None:
    order = ArrivalOrder(10)
    assert order.add(10, b"a") == [b"a"]
    waiting = [order.add(12 + k, bytes([k])) for k in range(REORDER_PACKETS - 1)]
    assert waiting == [[]] * (REORDER_PACKETS - 1)
    # The last one to wait gives 11 up: None (conceal it), then everything behind it.
    assert order.add(12 + REORDER_PACKETS - 1, b"z") == [None, *[bytes([k]) for k in range(REORDER_PACKETS - 1)],
                                                         b"z"]
    assert order.add(11, b"late") == []


def test_a_long_gap_is_skipped_with_little_concealment() -> None:
    order = ArrivalOrder(0)
    out: list[bytes | None] = []
    for k in range(REORDER_PACKETS):
        out += order.add(1000 + k, b"x")
    assert out == [None] * MAX_CONCEALED + [b"x"] * REORDER_PACKETS
