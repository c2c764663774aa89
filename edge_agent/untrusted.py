"""What others send, read without trusting it: numbers (a topic level, a query, a labels file), JSON
documents and their values (what devices and anything else on the broker publish), text to print, and
how often to log what they send wrong.

Python's `str.isdigit()` takes "²" and other scripts' digits, and `int()` refuses the first and any
string of thousands of digits: checked one way and converted the other, a crafted value raised where
nothing expected it (on the MQTT client's own thread, which it ended). Here a number is ASCII digits,
and only so many of them. Likewise `json.loads` raises RecursionError, not ValueError, on brackets
nested a few thousand deep, and `float()` raises on a string or a list: the fleet commands, which read
whatever any device (or anything else) publishes under the prefix, ended with a traceback on either.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_NUMBER = re.compile(r"-?[0-9]{1,18}")


def number(text: str, digits: int = 18, negative: bool = False) -> int | None:
    """`text` as an int where it is ASCII digits (at most `digits`, a leading minus where `negative`),
    else None."""
    m = _NUMBER.fullmatch(text)
    if m is None or (text[0] == "-" and not negative) or len(text.lstrip("-")) > digits:
        return None
    return int(text)


def log_now(n: int) -> bool:
    """Whether the n-th of something a peer decides the rate of (a refused connection, a message that
    could not be taken in) is logged: the 1st, 10th, 100th, 1000th and every 10000th."""
    return n in (1, 10, 100, 1000) or n % 10000 == 0


def document(payload: bytes | str) -> dict[str, Any] | None:
    """`payload` as a JSON object, or None where it is not one: not JSON, not UTF-8, nested past the
    parser's depth (RecursionError), or JSON of another shape (a list, a number)."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return doc if isinstance(doc, dict) else None


def real(value: Any) -> float | None:
    """A JSON number as a finite float, or None: a string, a list, true/false (Python's bool is an int)
    and NaN or infinity (Python's json reads them) are not numbers to compute with."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        out = float(value)
    except OverflowError:  # an int of hundreds of digits
        return None
    return out if math.isfinite(out) else None


#: C0 and C1 controls (ESC starts the sequences a terminal obeys; CSI is one C1 character), and the
#: marks that reorder text on screen (right-to-left overrides and isolates).
_MARKS = r"\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(rf"[\x00-\x0a{_MARKS}]")
_CONTROL_BUT_LINES = re.compile(rf"[\x00-\x09{_MARKS}]")


def plain(value: Any, limit: int | None = 200, lines: bool = False) -> str:
    """`value` as text safe to print on a terminal: control characters (escape sequences that would move
    the cursor, retitle the window or hide what came before; line breaks, but with `lines` those of a
    text of several lines) and the marks that reorder text written out as JSON writes them (\\n,
    \\u001b), so that a line of JSON stays the same JSON, and at most `limit` characters (None: all)."""
    try:
        text = value if isinstance(value, str) else str(value)
    except (ValueError, RecursionError):  # an int past str()'s digits, or a structure nested that deep
        text = f"<{type(value).__name__}>"
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return (_CONTROL_BUT_LINES if lines else _CONTROL).sub(_escaped, text)


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(m: re.Match[str]) -> str:
    c = m.group()
    return _SHORT.get(c) or f"\\u{ord(c):04x}"
