#!/usr/bin/env bash
# Create .venv and install hallo-rt into it. Usage: bash scripts/setup.sh [EXTRAS]   (e.g. "dev")
# torch is pinned to 2.13.0 and installed first: on our CPU machines that is the local CPU wheel, and an
# unpinned torch would pull gigabytes of CUDA packages. Any failed step stops the script (set -e).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 'torch ' + torch.__version__ + ' is not 2.13.0')"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
# The microphone source needs PyAudio (extra "mic"); "dev" gets it too, since its tests record from a virtual
# ALSA device. PyAudio builds from source on Linux against PortAudio's headers (Debian: portaudio19-dev).
[[ ",$extras," == *,dev,* && ",$extras," != *,mic,* ]] && spec=".[$extras,mic]"
need_deb() {  # need_deb PACKAGE WHY: install a Debian package as root, else say how and stop
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
  else
    echo "setup: $2: run 'sudo apt-get install $1', then this script again" >&2
    exit 1
  fi
}
if [[ "$spec" == *mic* ]] && command -v dpkg >/dev/null && ! dpkg -s portaudio19-dev >/dev/null 2>&1; then
  need_deb portaudio19-dev "PyAudio (extra 'mic') needs PortAudio's headers"
fi
# The demo avatar's training data speaks through espeak-ng (Debian package); the dev tests synthesize with it.
if [[ ",$extras," == *,dev,* ]] && ! command -v espeak-ng >/dev/null; then
  need_deb espeak-ng "the training-data tests need espeak-ng"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
.venv/bin/python -c "import hallo_rt.engine" && echo "setup: .venv ready (extras: ${extras:-none})"
