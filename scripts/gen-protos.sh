#!/usr/bin/env bash
# Regenerate egresskit/psrpc/protos/*_pb2.py(i) and egresskit/protos/*_pb2.py(i) from the
# .proto files beside them.
#
# Needs grpcio-tools (a dev tool, not a runtime dependency: `pip install grpcio-tools`)
# and the installed livekit-protocol package. That package ships generated modules,
# not .proto sources, so its descriptors (livekit_egress.proto and what it imports)
# are dumped to a descriptor set for protoc, and the generated imports of them are
# pointed at livekit.protocol's modules. Usage: scripts/gen-protos.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-python3}"
outs=(egresskit/psrpc/protos egresskit/protos)
deps="$(mktemp)"
trap 'rm -f "$deps"' EXIT

"$python" - "$deps" <<'PY'
import sys

from google.protobuf import descriptor_pb2
from livekit.protocol import egress

files, seen = descriptor_pb2.FileDescriptorSet(), set()

def add(fd):
    if fd.name in seen:
        return
    seen.add(fd.name)
    for dep in fd.dependencies:
        add(dep)
    fd.CopyToProto(files.file.add())

add(egress.DESCRIPTOR)
with open(sys.argv[1], "wb") as f:
    f.write(files.SerializeToString())
PY

"$python" -m grpc_tools.protoc -I . --descriptor_set_in="$deps" \
  --python_out=. --pyi_out=. $(printf '%s/*.proto ' "${outs[@]}")

# livekit.protocol registers livekit_<name>.proto as module livekit.protocol.<name>.
sed -i -E \
  -e 's/^import livekit_([a-z_]+)_pb2 as /from livekit.protocol import \1 as /' \
  -e 's/^from livekit_([a-z_]+)_pb2 import /from livekit.protocol.\1 import /' \
  $(printf '%s/*_pb2.py* ' "${outs[@]}")
