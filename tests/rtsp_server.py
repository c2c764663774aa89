"""A real RTSP camera for the tests: GStreamer's RTSP server (gst-rtsp-server, through PyGObject, run by
the system's Python, which has it: `scripts/test.sh` installs python3-gi and gir1.2-gst-rtsp-server-1.0)
serving a moving test pattern as RTP/JPEG at /live, as IP cameras serve their streams, or another of
videotestsrc's patterns: `smpte75` (still colour bars: a stream that repeats one picture), `black`.

Usage: /usr/bin/python3 tests/rtsp_server.py PORT [WIDTHxHEIGHT] [PATTERN]
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port = sys.argv[1]
width, height = (sys.argv[2] if len(sys.argv) > 2 else "640x480").split("x")
pattern = sys.argv[3] if len(sys.argv) > 3 else "ball"
server = GstRtspServer.RTSPServer()
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( videotestsrc is-live=true pattern={pattern} ! video/x-raw,format=I420,width={width},height={height},"
    "framerate=15/1 ! jpegenc ! rtpjpegpay name=pay0 pt=26 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/live", factory)
server.attach(None)
print("serving", flush=True)
GLib.MainLoop().run()
