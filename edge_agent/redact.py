"""What is shown of a URL (logged, printed, published): never its password, nor a signed query.

A camera's URL carries its password (`rtsp://admin:PASSWORD@cam/live`), and a model's download URL
may be signed for a while (`?X-Amz-Signature=...`): both are credentials, and the log, the retained
`info` document and a command's result are read by others.
"""

from __future__ import annotations

import re

#: a URL's user and password (`//user:password@`, or a token alone: `//token@`), wherever in a text it is;
#: up to the host's last `@`, as URL parsers take it (a password may hold one unescaped)
_USERINFO = re.compile(r"(?<=//)([^/\s]*)@")


def hide_credentials(text: str) -> str:
    """`text` (a source's URI, a GStreamer pipeline, a command line) with the password of every URL in it
    masked as the settings mask a password (`rtsp://admin:**********@cam/live`), and a user name that
    comes alone (a camera's token) masked whole: for what is logged, printed or published."""

    def masked(m: re.Match[str]) -> str:
        user, colon, _ = m.group(1).partition(":")
        return f"{user}:**********@" if colon else "**********@"

    return _USERINFO.sub(masked, text)


def shown_url(url: str) -> str:
    """A download's URL as logs and results show it: its password masked, its query and fragment left out
    (a signed URL's signature is there)."""
    base = re.split(r"[?#]", url, maxsplit=1)[0]
    return hide_credentials(base) + ("?..." if len(base) < len(url) else "")
