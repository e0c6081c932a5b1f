"""Error types: a closed, documented vocabulary; plugins' own types namespaced; status_dict keys
that do not grow with hosts and objects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from any2ds import ERROR_TYPES, FetchResult, ProcessError, Processor, Sample, SampleError, SampleResult
from any2ds.errors import error_type_of, status_key
from any2ds.manager import PluginHost
from any2ds.processing import ProcessingStage
from any2ds.worker import MAX_STATUS_KEYS, TOP_FAILED_HOSTS, StatsTally

REPO = Path(__file__).resolve().parent.parent


def test_the_plugin_guide_lists_exactly_the_core_types():
    guide = (REPO / "docs" / "plugins.md").read_text()
    table = dict(re.findall(r"^\| `([a-z0-9_]+)` \| (.+) \|$", guide.split("### Error types")[1], re.MULTILINE))
    assert table == ERROR_TYPES


# Where the built-in plugins name an error type: error_type="...", error_type = "...", and the image
# and audio processors' failure helpers (message first, type last).
_TYPE_LITERALS = re.compile(r'error_type\s*=\s*"([^"]+)"|\b_?failure\((?:[^()]|\([^()]*\))*?,\s*"([^"]+)"\)', re.DOTALL)


def test_every_built_in_error_type_is_a_core_type_or_namespaced_by_its_component():
    names = {name for registry in PluginHost.load().registries.values() for name in registry.names()}
    found = {}
    for path in (REPO / "plugins").rglob("*.py"):
        for match in _TYPE_LITERALS.finditer(path.read_text()):
            found[match.group(1) or match.group(2)] = path.name
    assert len(found) >= 20, found  # the scan sees them
    wrong = {kind: where for kind, where in found.items()
             if kind not in ERROR_TYPES and not ("." in kind and kind.split(".")[0] in names)}
    assert wrong == {}


class Thumbnail(Processor):
    name = "thumbnail"

    def process(self, fetched, result):
        kind = fetched.body.decode()
        if kind == "bug":
            raise KeyError("width")
        raise ProcessError("cannot make it", error_type=None if kind == "untyped" else kind)


@pytest.mark.parametrize("body, error_type, message", [
    ("decode", "decode", "cannot make it"),  # a core type
    ("thumbnail.too_small", "thumbnail.too_small", "cannot make it"),  # namespaced by the plugin
    ("Corrupt", "thumbnail.Corrupt", "cannot make it"),  # namespaced by the core
    ("untyped", "other", "cannot make it"),
    ("bug", "unexpected", "KeyError: 'width'"),
])
def test_processing_failures_get_a_type_of_the_vocabulary(body, error_type, message):
    result = ProcessingStage([], [Thumbnail(None)], "chain").run(Sample("0", 0, 0, "http://x/a"),
                                                                 FetchResult(body.encode(), "http://x/a"))
    assert (result.status, result.error_type, result.error_message) == ("failed_to_process", error_type, message)


def test_error_type_of_keeps_core_and_dotted_types():
    assert error_type_of(SampleError("x", error_type="timeout"), "http") == "timeout"
    assert error_type_of(SampleError("x", error_type="archive.invalid_json"), "archive") == "archive.invalid_json"
    assert error_type_of(SampleError("x", error_type="Weird"), "lines") == "lines.Weird"
    assert error_type_of(RuntimeError("x"), "lines") == "unexpected"


# -- status_dict ---------------------------------------------------------------------------------


def failed(url: str, message: str, error_type: str) -> SampleResult:
    return SampleResult(Sample("0", 0, 0, url), status="failed_to_download", error_message=message,
                        error_type=error_type)


def test_messages_naming_hosts_addresses_and_sizes_share_a_key():
    assert status_key("HTTP Error 404: Not Found", "example.com") == "HTTP Error 404: Not Found"
    assert status_key("blocked: 10.1.2.3 is a private network address", "intranet") == (
        "blocked: <address> is a private network address")
    assert status_key("blocked: fd00::1 is a private network address") == (
        "blocked: <address> is a private network address")
    assert status_key("hostname 'cdn.example.com' doesn't match '*.other.net'", "cdn.example.com") == (
        "hostname '<host>' doesn't match '*.other.net'")
    assert status_key("body larger than 67108864 bytes") == "body larger than N bytes"
    assert status_key("at 12:30:45") == "at 12:30:45"  # not an address
    assert status_key("Failed to connect to [2001:db8::1]:8443 after 3 ms") == (
        "Failed to connect to <address>:N after 3 ms")
    assert status_key("connect to ::ffff:10.0.0.1 port 80") == "connect to <address> port 80"


@pytest.mark.parametrize("message", [
    "TLS connect error: error:0A00010B:SSL routines::wrong version number",
    "error:0A000086:SSL routines::certificate verify failed",
])
def test_openssl_codes_and_double_colons_are_not_addresses_or_numbers(message):
    assert status_key(message) == message


def test_status_dict_stays_small_and_the_failing_hosts_are_counted():
    tally = StatsTally()
    for i in range(300):
        tally.add(failed(f"http://site-{i % 30}.example/a.jpg", f"blocked: 10.0.{i % 250}.1 is private", "blocked"))
        tally.add(failed(f"http://site-{i % 30}.example/b.jpg", f"strange failure number {i}", "protocol"))
    tally.add(SampleResult(Sample("1", 0, 1, "http://ok.example/a.jpg")))
    stats = tally.stats(0).to_json()
    status_dict = stats["status_dict"]
    assert status_dict["blocked: <address> is private"] == 300
    assert len(status_dict) == MAX_STATUS_KEYS + 2  # the cap, the overflow of protocol, success
    assert status_dict["protocol (other messages)"] == 300 - (MAX_STATUS_KEYS - 1)
    assert status_dict["success"] == 1 and stats["error_types"] == {"blocked": 300, "protocol": 300}
    hosts = stats["failed_hosts"]
    assert len(hosts) == TOP_FAILED_HOSTS and hosts["site-0.example"] == {"blocked": 10, "protocol": 10}
