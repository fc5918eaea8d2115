#!/usr/bin/env bash
# Builds the example images offline and imports them into this machine's node:
#   busybox:1.36                 (../shared/images/busybox_image.py, needs busybox-static)
#   bosun/demo:1.0, bosun/demo:2.0  (examples/demo, a static binary; VERSION v1 and v2)
# usage: examples/images/build.sh [OUT_DIR]   (IMPORT=0 to only build; BOSUN_DATA_DIR as bosun)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/images}
mkdir -p "$out"
shared=${BOSUN_SHARED:-../shared}
python3 "$shared/images/busybox_image.py" "$out" >/dev/null
# A static binary, so that the image needs nothing else.
RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" cargo build --quiet --release -p demo --target x86_64-unknown-linux-gnu
python3 examples/images/demo_image.py "${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/demo" "$out/demo-docker.tar"
echo "built $out/busybox-oci.tar $out/demo-docker.tar"
if [[ ${IMPORT:-1} == 1 ]]; then
  bosun=${BOSUN:-target/release/bosun}
  [[ -x $bosun ]] || cargo build --quiet --release -p bosun
  "$bosun" images import "$out/busybox-oci.tar" "$out/demo-docker.tar"
fi
