"""img2dataset's politeness: its User-Agent, and its reading of X-Robots-Tag opt-outs.

Both stay exactly img2dataset's, so that servers see the same client and the
same URLs are refused.
"""

from __future__ import annotations

BASE_USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


def user_agent(token: str | None) -> str:
    """img2dataset's exact User-Agent, naming ``token`` (already normalised) when given."""
    if not token:
        return BASE_USER_AGENT
    return f"{BASE_USER_AGENT} (compatible; {token}; +https://github.com/rom1504/img2dataset)"


def robots_refused(values: list[str], token: str | None, disallowed: frozenset[str]) -> bool:
    """Whether X-Robots-Tag header ``values`` forbid use, by img2dataset's rule.

    Each value is ``[ua_token:] directive, directive...``; it applies when it
    names no token or names ``token``, and refuses when any of its directives
    is in ``disallowed``.
    """
    for value in values:
        head, sep, tail = value.partition(":")
        value_token = head.strip().lower() if sep else None
        directives = (tail if sep else head).split(",")
        if value_token is not None and value_token != token:
            continue
        if any(d.strip().lower() in disallowed for d in directives):
            return True
    return False
