"""Credentials kept out of what callbridge says: responses, log lines, exception messages, settings errors.

A URL's user info and query string are where credentials live (`redis://:PASSWORD@host/0`,
`https://user:key@llm.example.com/v1`, `?password=`); its scheme, host, port and path say which service is
meant, which is what a message needs. `redact_url` is the one place that masks them: every message that may
show a configured URL passes it through here.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "***"


def redact_url(url: str) -> str:
    """`url` with its password (or a lone user name, which may be a key) and every query value masked.

    An '@' that is not in the URL's authority (a mistyped URL, an unquoted '/' in a password) masks everything
    between the scheme and the last '@', and the whole query: better too much hidden than a password shown."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts, query = None, []
    if "@" in url and (parts is None or "@" not in parts.netloc):
        head, _, tail = url.rpartition("@")
        scheme, sep, _ = head.partition("://")
        host, question, _ = tail.partition("?")
        return f"{scheme + sep if sep else ''}{MASK}@{host}{'?' + MASK if question else ''}"
    if parts is None:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        user_info, _, host = netloc.rpartition("@")
        user, has_password, _ = user_info.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"
    masked_query = "&".join(f"{name}={MASK}" for name, _ in query)
    return urlunsplit((parts.scheme, netloc, parts.path, masked_query, parts.fragment))
