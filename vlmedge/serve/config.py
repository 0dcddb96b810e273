"""The server's knobs: how requests are batched and what one request may ask for."""

from __future__ import annotations

from dataclasses import dataclass

# The CPUs Ray reserves per replica of a model (`serve --engine ray`, --replica-cpus).
REPLICA_CPUS = 1.0


@dataclass(frozen=True)
class BatchConfig:
    """Dynamic batching, per model, as Triton's dynamic batcher does it.

    Attributes:
        max_batch: the most inputs (images, clips or captions) one pipeline call gets;
            a single request with more inputs runs on its own.
        max_delay_ms: how long the first request of a batch waits for others to join it.
        max_queue: requests waiting per model; one more is refused with 503 + Retry-After.
    """

    max_batch: int = 16
    max_delay_ms: float = 5.0
    max_queue: int = 64

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_delay_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_delay_ms >= 0.")


@dataclass(frozen=True)
class Limits:
    """What one request may send; each limit is answered with a 4xx JSON error naming it."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_inputs: int = 32              # images, clips or captions in one request
    max_image_pixels: int = 40_000_000
    max_audio_seconds: float = 120.0
    max_caption_chars: int = 1000
    max_labels: int = 256
    max_templates: int = 16
    max_top_k: int = 1000
    body_timeout_s: float = 30.0      # to receive the whole body (at most request_timeout_s)
    request_timeout_s: float = 60.0   # from arrival to answer; a request may ask for less

    def __post_init__(self) -> None:
        from vlmedge.errors import UsageError
        from vlmedge.preprocess.image import MAX_IMAGE_PIXELS

        if not 0 < self.max_image_pixels <= MAX_IMAGE_PIXELS:
            raise UsageError(f"max_image_pixels must be from 1 to {MAX_IMAGE_PIXELS:,} (the most the image decoder "
                             f"takes), not {self.max_image_pixels:,}.")
