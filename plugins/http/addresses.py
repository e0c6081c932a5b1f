"""Where requests may go: which IP addresses are allowed, and name resolution within a deadline.

URL lists come from the web, so by default no request reaches loopback,
private, link-local or cloud-metadata addresses (docs/security.md). Nothing
here depends on the HTTP library: any fetcher can resolve and check with it.
"""

from __future__ import annotations

import functools
import socket
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import attrs

from any2ds import FetchError

IPAddress = IPv4Address | IPv6Address
ALLOW_PRIVATE = "allow_private_networks"
ALLOW_LINK_LOCAL = "allow_link_local"
# Cloud metadata endpoints outside 169.254.0.0/16 (which is link-local, so blocked as a whole).
METADATA_ADDRESSES = frozenset(ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean...
    "fd00:ec2::254",  # AWS over IPv6 (inside fc00::/7)
    "100.100.100.200",  # Alibaba Cloud (inside 100.64.0.0/10)
    "168.63.129.16",  # Azure WireServer (a public address, reachable only from inside Azure)
))
PRIVATE_NETWORKS = tuple(ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))
NAT64_NETWORK = ip_network("64:ff9b::/96")


class BlockedAddress(FetchError):
    """A URL whose host is, or resolves to, an address the run does not allow; never retried."""

    error_type = "blocked"


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped ``::ffff:a.b.c.d``, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_NETWORK:
        return IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def address_kind(ip: IPAddress) -> tuple[str, str] | None:
    """What non-public kind of address ``ip`` is and the option allowing it; None for a public one."""
    if isinstance(ip, IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            return address_kind(embedded)
        ip = ip_address(str(ip).split("%")[0])  # a zone (fe80::1%eth0) names no other address
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address", ALLOW_LINK_LOCAL
    if ip.is_link_local:
        return "a link-local address", ALLOW_LINK_LOCAL
    if ip.is_loopback:
        return "a loopback address", ALLOW_PRIVATE
    if ip.is_unspecified:
        return "an unspecified address", ALLOW_PRIVATE
    if ip.is_multicast:
        return "a multicast address", ALLOW_PRIVATE
    if any(ip in network for network in PRIVATE_NETWORKS):
        return "a private network address", ALLOW_PRIVATE
    if ip.is_reserved or not ip.is_global:
        return "a reserved or special-purpose address", ALLOW_PRIVATE
    return None


@attrs.frozen
class AddressPolicy:
    """Which non-public addresses requests may connect to (public ones always)."""

    allow_private_networks: bool = False
    allow_link_local: bool = False

    @property
    def allows_everything(self) -> bool:
        return self.allow_private_networks and self.allow_link_local

    def refusal(self, address: str) -> BlockedAddress | None:
        """The error for connecting to ``address`` (an IP), or None when it is allowed."""
        kind = _kind_of(address)
        if kind is None:
            return None
        description, option = kind
        if getattr(self, option):
            return None
        return BlockedAddress(f"blocked: {address} is {description} (set {option} to allow)")


@functools.lru_cache(maxsize=4096)
def _kind_of(address: str) -> tuple[str, str] | None:
    """``address_kind`` of an IP written as text, remembered: parsing it is most of a check's cost, and
    fetchers check the same addresses at every request of a host."""
    return address_kind(ip_address(address))


def _can_bind_ipv6() -> bool:
    """Whether the machine can bind an IPv6 address (Python built with IPv6 is not enough)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# The families names resolve to: both when the machine has IPv6, else IPv4 alone. It is urllib3's
# rule (allowed_gai_family), so that both http fetchers resolve as requests does, written here so
# that processes fetching with libcurl do not import urllib3 for it (7.6 MB and 36 ms each).
RESOLVE_FAMILY = socket.AF_UNSPEC if _can_bind_ipv6() else socket.AF_INET


def resolve(host: str, port: int, timeout: float) -> list[tuple]:
    """``getaddrinfo`` within ``timeout`` seconds, which it cannot do itself.

    IP literals (including ``2130706433`` and ``0x7f.0.0.1``) are parsed at
    once; names are resolved on a helper thread, abandoned if it overruns
    (it ends when the resolver gives up). An overrun raises ``socket.gaierror`` (EAI_AGAIN); a
    name that cannot be encoded for a lookup, a FetchError (``invalid_url``).
    """
    host = host.strip("[]")
    family = RESOLVE_FAMILY
    try:
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    except UnicodeError as exc:  # a label empty or over 63 characters: no name a resolver could look up
        raise FetchError(str(exc), retryable=False, error_type="invalid_url") from exc
    answer: Future[list[tuple]] = Future()

    def lookup() -> None:
        try:
            answer.set_result(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the waiting thread
            answer.set_exception(exc)

    threading.Thread(target=lookup, name="any2ds-dns", daemon=True).start()
    try:
        return answer.result(timeout)
    except FuturesTimeout:  # a resolver too slow to answer is a DNS failure, not the server's
        raise socket.gaierror(socket.EAI_AGAIN, "DNS lookup timed out") from None
