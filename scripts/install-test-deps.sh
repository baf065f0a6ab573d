#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine (run as root):
# system packages, the npm tools, egresskit with its plugins and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt_packages=(ffmpeg chromium nginx libnginx-mod-rtmp srt-tools)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# nginx is started by the tests themselves on a private prefix, never as a system service
systemctl disable --now nginx >/dev/null 2>&1 || true

command -v azurite-blob >/dev/null 2>&1 || npm install -g --silent azurite@3 >/dev/null
npm install --silent --no-audit --no-fund --no-package-lock --prefix tests/node >/dev/null

# One pip run, so the resolver sees aiobotocore's botocore pin and boto3 together.
python3 -m pip install -q --disable-pip-version-check \
  -e ".[test]" \
  -e plugins/egresskit-gcs -e plugins/egresskit-azure -e plugins/egresskit-alioss

# redis-server for tests/test_psrpc*.py (psrpc over Redis, as livekit-server uses it).
# The tests start their own on free ports; the system service stays off.
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
systemctl disable --now redis-server >/dev/null 2>&1 || service redis-server stop >/dev/null 2>&1 || true
