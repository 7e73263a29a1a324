#!/usr/bin/env bash
# Builds the Linux guest's initramfs (a newc cpio, uncompressed) from the
# fetched static busybox and init.sh, with busybox's own `cpio -o -H newc`.
#
#   tests/image/linux/initramfs.sh [OUT_DIR]
#
# OUT_DIR defaults to <repo>/target/linux (where fetch.sh put busybox); the
# archive is OUT_DIR/initramfs.cpio.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$root/target/linux}"
"$here/fetch.sh" "$out"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp}
cp "$out/busybox" "$stage/bin/busybox"
cp "$here/init.sh" "$stage/init"
chmod 0755 "$stage/init" "$stage/bin/busybox"
(cd "$stage" && find . -mindepth 1 | sort | "$out/busybox" cpio -o -H newc -R 0:0 2>/dev/null) \
    >"$out/initramfs.cpio.tmp"
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
