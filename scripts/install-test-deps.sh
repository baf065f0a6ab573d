#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine (run as root):
# system packages, the npm tools, egresskit with its plugins and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
# chromium, xvfb and pulseaudio: web egress and custom templates only (egresskit/web/)
apt_packages=(ffmpeg chromium xvfb pulseaudio nginx libnginx-mod-rtmp srt-tools redis-server jq)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# nginx and redis-server are started by the tests themselves on private ports, never as
# system services
for service in nginx redis-server; do
  systemctl disable --now "$service" >/dev/null 2>&1 || service "$service" stop >/dev/null 2>&1 || true
done

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

# livekit-server for tests/test_livekit_*.py (a real LiveKit server on 127.0.0.1).
# Go is a test-time tool only; the binary is cached and rebuilt only for another version.
LIVEKIT_SERVER_VERSION=1.13.5
livekit_bin="$HOME/.cache/egresskit-test-deps/bin/livekit-server"
if ! "$livekit_bin" --version 2>/dev/null | grep -qx "livekit-server version $LIVEKIT_SERVER_VERSION"; then
  command -v go >/dev/null 2>&1 || { echo "go (1.26 or later) is needed to build livekit-server" >&2; exit 1; }
  gobin="$(mktemp -d)"
  GOBIN="$gobin" CGO_ENABLED=0 go install \
    "github.com/livekit/livekit-server/cmd/server@v$LIVEKIT_SERVER_VERSION"
  mkdir -p "$(dirname "$livekit_bin")"
  mv "$gobin/server" "$livekit_bin"
  rmdir "$gobin"
fi
