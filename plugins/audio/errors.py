"""How the audio processor fails a sample: one status, a stable error type, a fixed message.

Messages become ``status_dict`` keys, so they never hold a per-file number or an object address.
"""

from __future__ import annotations

from any2ds import ProcessError

FAILED_TO_PROCESS = "failed_to_process"


def failure(message: str, error_type: str) -> ProcessError:
    return ProcessError(message, status=FAILED_TO_PROCESS, error_type=error_type)


def too_large(max_samples: int) -> ProcessError:
    """The bomb-guard failure; one message per run."""
    return failure(f"audio too large to process (more than audio_max_samples={max_samples} samples)", "too_large")
