"""HTTP authentication for cameras: Basic, and Digest (RFC 7616), which most IP cameras' firmware asks
for (Hikvision, Dahua, Amcrest, Axis) and which sends no password over the wire.

The challenge lists are split by the standard library's `urllib.request.parse_http_list` and
`parse_keqv_list` (quoted commas and escapes); the response is RFC 7616's arithmetic, which urllib has
only inside its opener (no keep-alive, MD5 and SHA-1 only) and which is a few lines here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.request
from dataclasses import dataclass, field

#: Digest's algorithms by the names hashlib gives their hashes (SHA-512-256 where OpenSSL has it)
_HASHES = {
    name: h for name, h in {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}.items()
    if h in hashlib.algorithms_available
}


@dataclass
class Challenge:
    scheme: str  # "basic" or "digest", lower case
    params: dict[str, str] = field(default_factory=dict)


def challenges(headers: list[str]) -> list[Challenge]:
    """The challenges of a 401's `WWW-Authenticate` headers, each header one challenge (a header that
    names two schemes is read as its first). A parameter without a value, or with an empty one, is left
    out: `parse_keqv_list` raised on it (`nonce`, `nonce=`), and a camera's answer ended its source's
    open in a traceback instead of a challenge the agent cannot meet."""
    out = []
    for h in headers:
        scheme, _, rest = h.strip().partition(" ")
        if scheme:
            params = {}
            for item in urllib.request.parse_http_list(rest):
                key, eq, value = item.partition("=")
                if eq and key.strip() and value:
                    quoted = len(value) > 1 and value[0] == value[-1] == '"'
                    params[key.strip().lower()] = value[1:-1] if quoted else value
            out.append(Challenge(scheme.lower(), params))
    return out


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def supported(ch: Challenge) -> bool:
    if ch.scheme == "basic":
        return True
    algorithm = ch.params.get("algorithm", "MD5").upper().removesuffix("-SESS")
    qops = [q.strip() for q in ch.params.get("qop", "auth").split(",")]
    return ch.scheme == "digest" and "nonce" in ch.params and algorithm in _HASHES and "auth" in qops


def digest(ch: Challenge, user: str, password: str, method: str, uri: str, nc: int, cnonce: str | None = None) -> str:
    """The `Authorization` header answering a Digest challenge for one request (`nc`: how many times
    this nonce has been used, from 1; `cnonce`: random unless given, for tests)."""
    p = ch.params
    algorithm = p.get("algorithm", "MD5")
    name = _HASHES[algorithm.upper().removesuffix("-SESS")]

    def h(s: str) -> str:
        return hashlib.new(name, s.encode()).hexdigest()

    realm, nonce = p.get("realm", ""), p["nonce"]
    cnonce = cnonce or os.urandom(8).hex()
    ha1 = h(f"{user}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    qop = "qop" in p
    count = f"{nc:08x}"
    response = h(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}") if qop else h(f"{ha1}:{nonce}:{ha2}")
    fields = [
        f'username="{_quoted(user)}"', f'realm="{_quoted(realm)}"', f'nonce="{_quoted(nonce)}"',
        f'uri="{_quoted(uri)}"', f"algorithm={algorithm}", f'response="{response}"',
    ]
    if "opaque" in p:
        fields.append(f'opaque="{_quoted(p["opaque"])}"')
    if qop:
        fields += ["qop=auth", f"nc={count}", f'cnonce="{cnonce}"']
    return "Digest " + ", ".join(fields)


def _quoted(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')
