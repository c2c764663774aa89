"""Numbers read from what others send (a topic level, a query, a labels file), and how often to log
what they send wrong.

Python's `str.isdigit()` takes "²" and other scripts' digits, and `int()` refuses the first and any
string of thousands of digits: checked one way and converted the other, a crafted value raised where
nothing expected it (on the MQTT client's own thread, which it ended). Here a number is ASCII digits,
and only so many of them.
"""

from __future__ import annotations

import re

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
