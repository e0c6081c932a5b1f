"""The CPU side of a sample: verify the fetched bytes, pick the processors, run them."""

from __future__ import annotations

import re
from collections.abc import Sequence

from any2ds.components import Processor, Verifier
from any2ds.errors import ProcessError, SampleError, clean_message, error_message_of, error_type_of
from any2ds.mediatypes import detect_media_type
from any2ds.types import FetchResult, Sample, SampleResult

# A media extension ends up in file and tar member names: letters and digits,
# dot-separated (``jpg``, ``thumb.jpg``), so no path can be smuggled through it.
_SAFE_EXTENSION = re.compile(r"[A-Za-z0-9]{1,16}(\.[A-Za-z0-9]{1,16}){0,3}")
# The metadata field naming the processor of each sample, when samples are routed by type.
PROCESSOR_FIELD = "processor"
# Who raised a failure the core itself detects (its error types need no namespace).
CORE = "any2ds"


class ProcessingStage:
    """Runs the verifiers, then the processors the routing picks, on one fetched sample.

    ``routing`` is ``chain`` (every processor, in order) or ``by_type`` (the
    first processor whose :meth:`~any2ds.Processor.accepts` takes the body's
    detected media type; its name goes to the ``processor`` field).
    Thread-safe: it holds no state of its own.
    """

    def __init__(self, verifiers: Sequence[Verifier], processors: Sequence[Processor], routing: str) -> None:
        self.verifiers = list(verifiers)
        self.processors = list(processors)
        self.routing = routing

    def run(self, sample: Sample, fetched: FetchResult) -> SampleResult:
        """The sample's result; every failure, a plugin's bug included, becomes the result's status."""
        result = SampleResult(sample)
        status = "failed_to_download"  # verifiers judge the download, as img2dataset's hash check
        component = CORE
        try:
            for verifier in self.verifiers:
                component = verifier.name
                result.metadata.update(verifier.verify(sample, fetched))
            component = CORE
            for processor in self.route(sample, fetched, result):
                status, component = processor.failure_status, processor.name
                processor.process(fetched, result)
                _check_extensions(result, processor)
        except Exception as error:  # a plugin bug must cost one sample, not the shard
            return failure(sample, error, component, status, result)
        return result

    def route(self, sample: Sample, fetched: FetchResult, result: SampleResult) -> list[Processor]:
        if self.routing == "chain":
            return self.processors
        media_type = detect_media_type(fetched.body, fetched.content_type, fetched.url, sample.url, sample.filename)
        for processor in self.processors:
            if processor.accepts(media_type):
                result.metadata[PROCESSOR_FIELD] = processor.name
                return [processor]
        raise ProcessError(f"no processor accepts {media_type.mime}", error_type="unsupported")


def failure(sample: Sample, error: BaseException, component: str, status: str = "failed_to_download",
            partial: SampleResult | None = None) -> SampleResult:
    """The result of a sample that ``error``, raised by the component named ``component``, failed:
    a SampleError's own status, message and type (namespaced, see
    :func:`~any2ds.errors.error_type_of`); for another exception ``status`` and ``unexpected``."""
    if isinstance(error, SampleError):
        status = error.status
    return failed_result(sample, status, error_message_of(error), error_type_of(error, component), partial)


def failed_result(sample: Sample, status: str, message: str, error_type: str,
                  partial: SampleResult | None = None) -> SampleResult:
    """A failed sample's result: no media, no metadata but the routing's choice of processor."""
    kept = {PROCESSOR_FIELD: partial.metadata[PROCESSOR_FIELD]} if partial and PROCESSOR_FIELD in partial.metadata else {}
    return SampleResult(sample, status=status, error_message=clean_message(message), error_type=error_type,
                        metadata=kept)


def _check_extensions(result: SampleResult, processor: Processor) -> None:
    for stream, media in result.media.items():
        if not _SAFE_EXTENSION.fullmatch(media.extension):
            raise ProcessError(f"processor {processor.name!r} gave stream {stream!r} the unsafe extension "
                               f"{media.extension!r}", status=processor.failure_status, error_type="unsafe_extension")
