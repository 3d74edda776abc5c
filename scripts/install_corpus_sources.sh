#!/usr/bin/env bash
# Install the openly licensed art that `cliplab data sample-corpus` builds its corpus from.
# Idempotent: installs only what is missing.
#   Debian packages: openclipart-svg (public domain clip art), fonts-noto-color-emoji (Noto Color
#     Emoji font), unicode-cldr-core (emoji names and keywords), librsvg2-bin (rsvg-convert).
#   npm tarballs (fetched with `npm pack`, no Node project needed) into $CLIPLAB_SOURCES, default
#     ${CLIPLAB_HOME:-~/.cache/cliplab}/sources: @iconify-json/{twemoji,openmoji,fluent-emoji-flat,noto}.
# Usage: scripts/install_corpus_sources.sh [SOURCES_DIR]
set -euo pipefail

CLIPLAB_HOME="${CLIPLAB_HOME:-$HOME/.cache/cliplab}"
SOURCES="${1:-${CLIPLAB_SOURCES:-$CLIPLAB_HOME/sources}}"

DEB_PACKAGES=(openclipart-svg fonts-noto-color-emoji unicode-cldr-core librsvg2-bin)
NPM_PACKAGES=(@iconify-json/twemoji @iconify-json/openmoji @iconify-json/fluent-emoji-flat @iconify-json/noto)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
        $SUDO apt-get update
        $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
    fi
else
    echo "Debian packages present: ${DEB_PACKAGES[*]}"
fi

mkdir -p "$SOURCES"
for pkg in "${NPM_PACKAGES[@]}"; do
    # `npm pack @scope/name` writes scope-name-VERSION.tgz
    stem="$(echo "${pkg#@}" | tr '/' '-')"
    if compgen -G "$SOURCES/$stem-[0-9]*.tgz" >/dev/null; then
        echo "present: $pkg"
        continue
    fi
    command -v npm >/dev/null || { echo "npm is needed to fetch $pkg (apt-get install npm)" >&2; exit 1; }
    echo "fetching $pkg"
    tmp="$(mktemp -d "$SOURCES/.pack.XXXXXX")"
    (cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
    mv "$tmp"/*.tgz "$SOURCES/"
    rmdir "$tmp"
done
echo "sources ready in $SOURCES"
