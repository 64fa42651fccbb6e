#!/usr/bin/env bash
# Install Debian's chromium (for the gallery page's browser test) when it is missing.
# CI runs this before the tests; on a developer machine the browser test is skipped without it.
# Playwright's Python package drives this system browser; `playwright install` is never needed.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium present: $(command -v chromium)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
command -v chromium
