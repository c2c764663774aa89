"""Shared OpenCV VideoCapture plumbing for the camera, file, stream and GStreamer sources."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from edge_agent.sources.base import EndOfStream, Source, SourceError

log = logging.getLogger(__name__)


class OpenCVSource(Source):
    api_preference: int = cv2.CAP_ANY
    #: finite sources end; live ones only fail
    finite = False

    def __init__(self, uri: str, loop: bool = True):
        super().__init__(uri)
        self.loop = loop
        self._cap: cv2.VideoCapture | None = None

    def _target(self) -> str | int:
        return self.uri

    def _configure(self, cap: cv2.VideoCapture) -> None:
        """Set capture properties after opening (size, buffering)."""

    def _open_params(self) -> list[int]:
        return []

    def open(self) -> None:
        params = self._open_params()
        cap = (
            cv2.VideoCapture(self._target(), self.api_preference, params)
            if params
            else cv2.VideoCapture(self._target(), self.api_preference)
        )
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.describe()}")
        self._configure(cap)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.nominal_fps = float(fps) if fps and 0 < fps < 1000 else None
        self._cap = cap

    def grab(self) -> None:
        cap = self._cap
        if cap is None:
            raise SourceError("not open")
        if cap.grab():
            return
        if self.finite:
            if not self.loop:
                raise EndOfStream(self.uri)
            if cap.set(cv2.CAP_PROP_POS_FRAMES, 0) and cap.grab():
                return
            # rewinding failed (stream-like file): reopen from the start
            self.close()
            self.open()
            if self._cap is not None and self._cap.grab():
                return
        raise SourceError(f"{self.describe()}: no frame")

    def retrieve(self) -> np.ndarray:
        cap = self._cap
        if cap is None:
            raise SourceError("not open")
        ok, img = cap.retrieve()
        if not ok or img is None or img.size == 0:
            raise SourceError(f"{self.describe()}: frame could not be decoded")
        return img

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
