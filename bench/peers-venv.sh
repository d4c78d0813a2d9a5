#!/bin/sh
# Create or refresh bench/.peers-venv from bench/peers-requirements.txt.
# Rebuilt only when the venv is missing or the requirements file is newer than its marker.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.peers-venv"
req="$here/peers-requirements.txt"
marker="$venv/.installed"
if [ -f "$marker" ] && [ ! "$req" -nt "$marker" ]; then
    exit 0
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
touch "$marker"
