"""Prometheus metrics for one app (its own registry: no process-wide globals), served at /metrics.

With WORKERS > 1 a scrape reaches whichever worker the kernel picks, so the supervisor gives the workers a
shared directory (`PROMETHEUS_MULTIPROC_DIR`, prometheus_client's multiprocess mode: each worker's values
live in memory-mapped files there) and every worker serves the sum over all of them. The variable must be
set before prometheus_client is imported, which is why the supervisor sets it in the workers' environment.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # livesum: the workers' values added up, a dead worker's dropped (the supervisor marks it dead).
        self.calls_in_progress = Gauge("callbridge_calls_in_progress", "Calls in progress", ["transport"], registry=r,
                                       multiprocess_mode="livesum")
        self.calls = Counter("callbridge_calls", "Calls started", ["transport"], registry=r)
        self.turn_latency = Histogram(
            "callbridge_turn_latency_seconds", "End of the caller's speech to the bot's first audio", registry=r,
            buckets=(0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0),
        )
        self.barge_ins = Counter("callbridge_barge_ins", "Replies cancelled because the caller spoke", registry=r)
        self.vad_inference = Histogram(
            "callbridge_vad_inference_seconds", "Time of one batched VAD inference", registry=r,
            buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05),
        )
        self.vad_batch_size = Histogram(
            "callbridge_vad_batch_windows", "Calls' windows in one VAD inference", registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.stage_seconds = Histogram(
            "callbridge_stage_seconds", "A bot's stages per turn (the assistant: stt, llm_first_token, "
            "tts_first_audio)", ["stage"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
        )
        for stage in ("stt", "llm_first_token", "tts_first_audio"):  # the assistant's, served from the start
            self.stage_seconds.labels(stage)
        self.end_of_turn_questions = Counter(
            "callbridge_end_of_turn_questions", "End-of-turn model questions (END_OF_TURN=model) by answer: complete "
            "(it ended the turn), incomplete, stale (the caller spoke again or the call ended first)", ["answer"],
            registry=r,
        )
        self.end_of_turn_inference = Histogram(
            "callbridge_end_of_turn_inference_seconds", "Time of one end-of-turn model inference", registry=r,
            buckets=(0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.5),
        )
        self.end_of_turn_cpu = Counter("callbridge_end_of_turn_cpu_seconds", "CPU time of end-of-turn inference",
                                       registry=r)
        self.errors = Counter("callbridge_errors", "Errors by kind", ["kind"], registry=r)
        self.rejections = Counter(
            "callbridge_concurrency_rejections", "Calls refused at the concurrency limit", registry=r
        )

    # The Call's observer interface.
    def barge_in(self) -> None:
        self.barge_ins.inc()

    def turn_answered(self, latency_seconds: float) -> None:
        self.turn_latency.observe(latency_seconds)

    def bot_error(self) -> None:
        self.errors.labels("bot").inc()

    def stage_timings(self, stages: dict[str, float]) -> None:
        for stage, seconds in stages.items():
            self.stage_seconds.labels(stage).observe(seconds)

    def end_of_turn_answered(self, answer: str) -> None:
        self.end_of_turn_questions.labels(answer).inc()

    # The end-of-turn model's (called on its thread: prometheus_client's metrics are thread-safe).
    def end_of_turn_inference_done(self, seconds: float, cpu_seconds: float) -> None:
        self.end_of_turn_inference.observe(seconds)
        self.end_of_turn_cpu.inc(cpu_seconds)

    # The VAD batcher's.
    def vad_batch(self, seconds: float, windows: int) -> None:
        self.vad_inference.observe(seconds)
        self.vad_batch_size.observe(windows)

    def render(self) -> bytes:
        """This process's metrics, or every worker's added up in multiprocess mode."""
        directory = os.environ.get(MULTIPROCESS_DIR)
        if not directory:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, directory)
        return generate_latest(every_worker)
