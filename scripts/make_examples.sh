#!/usr/bin/env bash
# Rebuild examples/portrait.jpg and examples/speech.wav from their sources (see examples/README.md). Not run by CI.
# Usage: bash scripts/make_examples.sh
# Needs: espeak-ng (apt-get install espeak-ng; 1.51 was used), a Python with PyAV and Pillow (PYTHON, default
# .venv/bin/python), and the scikit-image 0.26.0 wheel (SKIMAGE_WHEEL=path/to/wheel, else `pip download`ed).
# Byte-identical output needs the same espeak-ng, Pillow (libjpeg-turbo) and PyAV (FFmpeg) versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
SENTENCE="The weather is calm and clear across the valley."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. Portrait: skimage/data/astronaut.png (512x512, public domain, NASA) -> JPEG quality 90.
wheel="${SKIMAGE_WHEEL:-}"
if [ -z "$wheel" ]; then
    "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: --dest "$work" "scikit-image==0.26.0"
    wheel="$(ls "$work"/scikit_image-0.26.0-*.whl | head -n 1)"
fi
"$PYTHON" - "$wheel" <<'EOF'
import io, sys, zipfile
from PIL import Image

with zipfile.ZipFile(sys.argv[1]) as wheel:
    png = wheel.read("skimage/data/astronaut.png")
img = Image.open(io.BytesIO(png)).convert("RGB")
assert img.size == (512, 512), img.size
img.save("examples/portrait.jpg", "JPEG", quality=90, optimize=True)
EOF

# 2. Speech: espeak-ng (22050 Hz mono) -> 16 kHz mono 16-bit WAV, resampled by FFmpeg's swresample via PyAV
#    and written with Python's `wave` (a plain 44-byte header, no encoder tag).
espeak-ng -v en-us -s 150 -w "$work/espeak.wav" "$SENTENCE"
"$PYTHON" - "$work/espeak.wav" <<'EOF'
import sys, wave
import av
import numpy as np

resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
chunks = []
with av.open(sys.argv[1]) as container:
    for frame in container.decode(audio=0):
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
samples = np.concatenate(chunks).astype("<i2")
with wave.open("examples/speech.wav", "wb") as out:
    out.setnchannels(1)
    out.setsampwidth(2)
    out.setframerate(16000)
    out.writeframes(samples.tobytes())
EOF

sha256sum examples/portrait.jpg examples/speech.wav
