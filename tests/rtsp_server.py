"""A real RTSP camera for the tests: GStreamer's RTSP server (gst-rtsp-server, through PyGObject, run by
the system's Python, which has it: `scripts/test.sh` installs python3-gi and gir1.2-gst-rtsp-server-1.0)
serving a moving test pattern as RTP/JPEG at /live, as IP cameras serve their streams, or another of
videotestsrc's patterns: `smpte75` (still colour bars: a stream that repeats one picture), `black`.
With `--tls CERT KEY` it serves rtsps:// (RTSP over TLS, the media interleaved on that connection), and
with `--user NAME:PASSWORD` it asks for Digest authentication, as cameras' firmware does.

Usage: /usr/bin/python3 tests/rtsp_server.py PORT [WIDTHxHEIGHT] [PATTERN] [--tls CERT KEY] [--user NAME:PASSWORD]
"""

import argparse

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("port")
parser.add_argument("size", nargs="?", default="640x480")
parser.add_argument("pattern", nargs="?", default="ball")
parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
parser.add_argument("--user")
args = parser.parse_args()

Gst.init(None)
width, height = args.size.split("x")
server = GstRtspServer.RTSPServer()
server.set_service(args.port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( videotestsrc is-live=true pattern={args.pattern} ! video/x-raw,format=I420,width={width},height={height},"
    "framerate=15/1 ! jpegenc ! rtpjpegpay name=pay0 pt=26 )"
)
factory.set_shared(True)
if args.tls or args.user:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "viewer")
    if args.tls:
        auth.set_tls_certificate(Gio.TlsCertificate.new_from_files(*args.tls))
    if args.user:
        name, _, password = args.user.partition(":")
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        auth.add_digest(name, password, token)
    else:
        auth.set_default_token(token)  # anyone may watch
    server.set_auth(auth)
    factory.add_role_from_structure(Gst.Structure.new_from_string(
        "viewer,media.factory.access=(boolean)true,media.factory.construct=(boolean)true"))
server.get_mount_points().add_factory("/live", factory)
server.attach(None)
print("serving", flush=True)
GLib.MainLoop().run()
