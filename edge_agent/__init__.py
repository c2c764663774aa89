"""edge-agent: on-device inference with LiteRT, results and health over MQTT."""

import os

from edge_agent.imageheader import MAX_PIXELS

__version__ = "0.1.0"

# OpenCV's decoders refuse a picture that declares more pixels than this before allocating it, in every
# format (a WebP of 10 KB declaring 16,000 x 16,000 and a TIFF of 2 MB declaring 20,000 x 20,000 decoded
# to 1.6 and 2.5 GB here; `imageheader` reads only JPEG and PNG headers). OpenCV reads the limit once, as
# it loads: set here, before any module of this package imports cv2. One set by the user is kept.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
