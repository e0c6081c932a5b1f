"""The built-in ``audio`` processor: bounded decoding with libsndfile, resampling with soxr, re-encoding."""

from any2ds_plugins.audio.processor import any2ds_register_processors

__all__ = ["any2ds_register_processors"]
