"""Benchmarks: the codec bench and the load harness that runs callbridge and FastRTC side by side."""
