#!/usr/bin/env bash
# The base root filesystem of every e2e image: Debian bookworm (Python 3.11, the version
# the project targets) from the mirror apt already uses, made with mmdebstrap. No registry
# is reachable here, so python:3.11-slim-bookworm cannot be pulled; this is its stand-in.
#   base.sh OUT.tar
set -euo pipefail
out=$1
mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
mmdebstrap --quiet --variant=minbase --mode=root \
  --include=python3,python3-venv,ca-certificates,libgomp1,libnuma1 \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  bookworm "$out" "$mirror"
