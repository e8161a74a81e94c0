#!/usr/bin/env bash
# Install the free music musicembed may train on and prepare it in OUT_DIR (docs/data.md).
#
#   bash scripts/prepare_free_music.sh OUT_DIR [options of prepare_free_music.py]
#
# Installs exactly the allowed Debian music packages, FluidSynth with two General MIDI
# soundfonts (play the MIDI of openttd-openmsx and the music21 works) and openmpt123 (plays
# the tracker modules of fb-music-high, pingus, tecnoballz, ri-li, solarwolf), then the Python
# packages the helper needs into $PYTHON (default python3), and runs the helper niced.
# Needs root or sudo for apt-get. Safe to rerun: finished files are kept.
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: $0 OUT_DIR [options of prepare_free_music.py]" >&2
    exit 2
fi
OUT_DIR=$1
shift
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The packages whose music is used (docs/data.md lists what is taken from each). The allowed
# trigger-rally-data, neverball-data, pokerth-data and mirrormagic-data carry no music.
MUSIC_PACKAGES=(
    wesnoth-1.16-music warzone2100-music planetblupi-music-ogg drascula-music
    xblast-tnt-musics fb-music-high
    freedroidrpg-data supertuxkart-data flare-game freeorion-data supertux-data
    widelands-data lincity-ng-data frozen-bubble-data warmux-data xmoto-data scorched3d-data
    ri-li-data pingus-data holotz-castle-data tecnoballz-data hex-a-hop-data solarwolf
    pangzero funnyboat openttd-openmsx
)
TOOL_PACKAGES=(fluidsynth fluid-soundfont-gm timgm6mb-soundfont openmpt123)
PYTHON_PACKAGES=("music21>=9.1" "mido>=1.3" "soundfile>=0.12.1" "soxr>=0.3.7" "numpy>=1.24")

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

missing=()
for pkg in "${MUSIC_PACKAGES[@]}" "${TOOL_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing ${missing[*]} (about 2.4 GB download)"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet "${PYTHON_PACKAGES[@]}"

exec nice -n 10 "$PYTHON" "$HERE/prepare_free_music.py" "$OUT_DIR" "$@"
