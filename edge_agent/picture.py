"""Whether a camera still shows the world: a picture that stopped changing, or one of a single flat tone.

A camera in the field fails in ways that keep frames coming, so the source stays `running` and nothing
else notices: a stream that repeats its last frame (an encoder or a recorder in between that hangs, a
camera that shows its last picture while its sensor is gone), and a picture with nothing in it (the lens
covered, sprayed or turned to a wall or the sky, a night without infrared, a decoder's grey or green
frames, snow). Detection goes on either way, and finds nothing; health says why, so a box that has
seen nothing for a week is not taken for a quiet week.

The watch looks at most once a second (`_LOOK_S`), on the capture thread, at a frame it decoded anyway:
about half a millisecond a second for a 1080p camera.

- Frozen: fewer than `_STILL_SHARE` of the picture's sampled values changed since the last look, at
  every look for `source.frozen_after_s`. A real sensor's noise changes nearly every value from one
  second to the next, however still the scene; a camera's burnt-in clock changes a few, and must not
  hide a frozen picture (it stops with the picture where the encoder hangs, not where a recorder
  repeats a frame). A video codec repeats its last picture where nothing moved, until its next key
  frame: a few seconds at most, far inside the default.
- Blank: 90% of a 32 x 24 thumbnail's cells (each the mean of many pixels, so a covered lens's
  noise averages out) lie within `_FLAT_LEVELS` grey levels (of 255), at every look for
  `source.blank_after_s`. The spread between two percentiles, not the standard deviation: a camera's
  clock and name burnt into a black picture touch 1-4% of the cells (under 1% of its pixels), while a
  night scene whose one lit doorway fills a tenth of it is seen.
- Dark: a blank picture under `DARK_LEVEL` (a covered lens, a night without infrared, the lights off) is
  blank as well, unless `source.dark_is_blank` is false: a camera without infrared goes dark every
  night, and its users want to hear of a covered or sprayed lens by day, not of every night. Its state is
  then `dark`, which is no problem; a flat picture that is not dark still is.

Only live sources are watched (cameras, streams, commands, snapshot URLs): a file or a folder of
pictures may show one still picture by design.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: Seconds between two looks.
_LOOK_S = 1.0
#: Largest side of the sample compared between looks (every n-th pixel of each row and column).
_SAMPLE_SIDE = 320
#: A look at which fewer than this share of the sampled values changed shows a still picture.
_STILL_SHARE = 0.01
#: Thumbnail for the flat-picture check (width, height).
_THUMB = (32, 24)
#: A thumbnail whose cells from the 5th to the 95th percentile lie within this many grey levels is flat.
_FLAT_LEVELS = 12.0
_FLAT_PERCENTILES = (5, 95)
#: A flat picture whose mean grey level is under this is too dark to see.
DARK_LEVEL = 40.0

State = Literal["ok", "frozen", "blank", "dark"]


class PictureWatch:
    """One camera's picture, looked at once a second. `look` on every frame the capture decodes; `info`
    and `problem` for health."""

    def __init__(self) -> None:
        self._next = 0.0
        self._last_look = 0.0
        self._sample: np.ndarray | None = None
        self._still_since: float | None = None  # monotonic time of the first look that found it still
        self._flat_since: float | None = None
        self._level: float | None = None  # mean grey level at the last look
        self.state: State = "ok"
        self._small = np.empty((_THUMB[1], _THUMB[0], 3), np.uint8)
        self._thumb = np.empty((_THUMB[1], _THUMB[0]), np.uint8)

    def look(self, image: np.ndarray, now: float, frozen_after_s: float, blank_after_s: float,
             dark_is_blank: bool = True) -> None:
        """A frame the capture decoded, at `now` (monotonic seconds). Does its work at most once a second;
        0 for either limit turns that check off; `dark_is_blank` false says a dark picture as `dark`."""
        if now < self._next or not (frozen_after_s or blank_after_s):
            return
        if image.ndim != 3 or image.shape[2] != 3 or not image.size:
            return
        self._next = now + _LOOK_S
        last, self._last_look = self._last_look, now
        step = max(1, -(-max(image.shape[:2]) // _SAMPLE_SIDE))
        sample = np.array(image[::step, ::step])  # a copy even at step 1: a source may reuse its frame buffer
        prev, self._sample = self._sample, sample
        if prev is not None and prev.shape == sample.shape:
            changed = int(np.count_nonzero(cv2.absdiff(prev, sample)))
            still = changed < _STILL_SHARE * sample.size
        else:  # the first look, or the frame's size changed (a camera reconfigured, a decode scale)
            still = False
        if not still:
            self._still_since = None
        elif self._still_since is None:
            self._still_since = last  # it was already this picture at the look before
        is_flat, self._level = flat(sample, self._small, self._thumb)
        if not is_flat:
            self._flat_since = None
        elif self._flat_since is None:
            self._flat_since = now
        # a picture both still and flat (a recorder's black "no video" frame) is said to be blank: what
        # it shows says more than that it repeats
        state: State = "ok"
        if blank_after_s and self._flat_since is not None and now - self._flat_since >= blank_after_s:
            state = "blank" if dark_is_blank or self._level >= DARK_LEVEL else "dark"
        elif frozen_after_s and self._still_since is not None and now - self._still_since >= frozen_after_s:
            state = "frozen"
        if state == self.state:
            return
        if state == "ok":
            log.info("camera picture %s no more", self.state)
        self.state = state
        if state == "dark":
            log.info("camera picture too dark to see (grey level %.0f of 255), which source.dark_is_blank = false "
                     "says is no problem", self._level)
        elif state != "ok":
            log.warning("%s", problem(self.info(now)))

    def info(self, now: float) -> dict[str, Any]:
        """Health's `source.picture`: the state, for how long, and the picture's mean grey level."""
        since = {"frozen": self._still_since, "blank": self._flat_since, "dark": self._flat_since}.get(self.state)
        return {
            "state": self.state,
            "for_s": round(now - since, 1) if since is not None else None,
            "level": round(self._level, 1) if self._level is not None else None,
        }


def flat(image: np.ndarray, small: np.ndarray | None = None, thumb: np.ndarray | None = None) -> tuple[bool, float]:
    """Whether a BGR picture is one flat tone (90% of a 32x24 thumbnail's cells within `_FLAT_LEVELS` grey
    levels), and its mean grey level. small, thumb: buffers to reuse (the watch's, once a second)."""
    small = cv2.resize(image, _THUMB, dst=small, interpolation=cv2.INTER_AREA)
    thumb = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY, dst=thumb)
    lo, hi = np.percentile(thumb, _FLAT_PERCENTILES)
    return bool(hi - lo <= _FLAT_LEVELS), float(thumb.mean())


def problem(info: dict[str, Any] | None) -> str | None:
    """What health's problems say of a picture (`PictureWatch.info`) that is frozen or blank; None while
    it is fine, dark where that is no problem (`source.dark_is_blank` false), or not watched."""
    if not info or info.get("state") not in ("frozen", "blank"):
        return None
    secs = info.get("for_s") or 0.0
    if info["state"] == "frozen":
        return (
            f"camera picture frozen: unchanged for {secs:.0f} s (a stream repeating its last frame: the camera or "
            "a recorder hangs)"
        )
    return (
        f"camera picture blank: one flat tone for {secs:.0f} s, grey level {info.get('level') or 0:.0f} of 255 "
        "(the lens covered or facing a wall or the sky, too dark to see, or no signal)"
    )
