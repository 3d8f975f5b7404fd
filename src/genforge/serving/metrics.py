"""Prometheus metrics of one server. A registry per app (tests build many apps in one process); with
several worker processes (PROMETHEUS_MULTIPROC_DIR set by `genforge serve --workers`), values go to
shared files and /metrics adds up every worker's."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("genforge_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.latency = Histogram("genforge_request_seconds", "Request latency by route (to the last byte).",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("genforge_batch_rows", "Rows per batch: images or spoken digits per forward pass, text choices per decode step.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("genforge_queue_depth", "Requests waiting for a batch (video models: jobs waiting to "
                                 "run).", ["model"], registry=r, multiprocess_mode="livesum")
        self.queue_work = Gauge("genforge_queue_work", "Work queued or running, in the model's units: row-tokens "
                                "(text: rows x max_tokens left) or rows x network calls (images, speech).", ["model"],
                                registry=r, multiprocess_mode="livesum")
        self.estimated_wait = Gauge("genforge_estimated_wait_seconds", "Estimated wait before a one-row request "
                                    "would start now.", ["model"], registry=r, multiprocess_mode="livemax")
        self.tokens = Counter("genforge_generated_tokens", "Tokens generated.", ["model"], registry=r)
        self.prompt_tokens = Counter("genforge_prompt_tokens", "Prompt tokens read.", ["model"], registry=r)
        self.images = Counter("genforge_generated_images", "Images generated.", ["model"], registry=r)
        self.audio_seconds = Counter("genforge_generated_audio_seconds", "Seconds of speech generated.", ["model"],
                                     registry=r)
        self.rejected = Counter("genforge_rejected", "Requests refused because a queue was full.", ["model"], registry=r)
        # video jobs (/v1/videos): what each model holds now, and how jobs ended
        self.jobs = Gauge("genforge_video_jobs", "Video jobs held, by model and status (queued, in_progress, "
                          "completed, failed).", ["model", "status"], registry=r, multiprocess_mode="livesum")
        self.jobs_finished = Counter("genforge_video_jobs_finished", "Video jobs that ended, by model and outcome "
                                     "(completed, failed, cancelled, expired).", ["model", "outcome"], registry=r)
        self.video_seconds = Counter("genforge_generated_video_seconds", "Seconds of video generated.", ["model"],
                                     registry=r)

    def exposition(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
