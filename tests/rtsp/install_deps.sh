#!/usr/bin/env bash
# Debian packages for the RTSP tests and RTSP out: GStreamer's RTSP server (for Debian's own
# python3) and the plugins that decode JPEG, encode and packetise; ffmpeg (ffprobe, the RTSP
# client of the tests) and chromium (the web viewer's browser tests). Installs them only when they
# are missing and this runs as root with apt-get; otherwise says in one line that the
# RTSP and browser tests will skip.
set -u
PACKAGES="gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav ffmpeg chromium"
PROBE='import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("x264enc", "rtph264pay", "videoconvert", "h264parse", "jpegdec", "jpegparse") if Gst.ElementFactory.find(e) is None]
raise SystemExit(1 if missing else 0)'

have_deps() { [ -x /usr/bin/python3 ] && /usr/bin/python3 -c "$PROBE" >/dev/null 2>&1 && command -v ffprobe >/dev/null && command -v chromium >/dev/null; }

if have_deps; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: GStreamer RTSP server packages missing (need root and apt-get to install: $PACKAGES); RTSP and browser tests will skip"
    exit 0
fi
echo "system-deps: installing $PACKAGES"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null; }; then
    echo "system-deps: apt-get could not install the GStreamer RTSP packages; RTSP and browser tests will skip"
    exit 0
fi
have_deps || echo "system-deps: GStreamer RTSP server still not usable after install; RTSP and browser tests will skip"
exit 0
