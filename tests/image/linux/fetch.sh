#!/usr/bin/env bash
# Fetches the Linux guest's parts from Debian (bookworm) without installing
# anything into the system: `apt-get download` the cloud kernel package (the
# version the `linux-image-cloud-amd64` meta-package points to, unless
# LINUX_PACKAGE names one) and `busybox-static`, and unpacks them with
# `dpkg -x` under the build directory (see docs/testing.md, "The Linux guest").
#
#   tests/image/linux/fetch.sh [OUT_DIR]
#
# OUT_DIR defaults to <repo>/target/linux. Afterwards it holds:
#   vmlinuz   the kernel (bzImage, Debian's own binary, unmodified)
#   busybox   the static busybox
#   VERSION   the kernel package's name and version
# Reruns are no-ops once both files exist. Needs apt-get (runs `apt-get update`
# once when the package lists do not know the packages).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$root/target/linux}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if [ -s "$out/vmlinuz" ] && [ -x "$out/busybox" ] && [ -s "$out/VERSION" ]; then
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# kernel_package: the concrete package the cloud meta-package depends on.
kernel_package() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n 1
}

pkg="${LINUX_PACKAGE:-$(kernel_package)}"
if [ -z "$pkg" ] || ! apt-cache show busybox-static >/dev/null 2>&1; then
    echo "fetch.sh: package lists do not know the packages; running apt-get update" >&2
    $sudo apt-get update >/dev/null
    pkg="${LINUX_PACKAGE:-$(kernel_package)}"
fi
if [ -z "$pkg" ]; then
    echo "fetch.sh: no linux-image-*-cloud-amd64 package found" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt's download sandbox user must be able to write there.
chmod 0755 "$work"
# apt-get download writes into the current directory, as the invoking user.
(cd "$work" && apt-get download -q "$pkg" busybox-static >/dev/null)
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$work/root"
done

vmlinuz="$(ls "$work"/root/boot/vmlinuz-* | head -n 1)"
cp "$vmlinuz" "$out/vmlinuz"
cp "$work/root/bin/busybox" "$out/busybox"
chmod 0755 "$out/busybox"
{
    for deb in "$work"/*.deb; do echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"; done
} >"$out/VERSION"
echo "fetch.sh: $(paste -sd, "$out/VERSION") -> $out"
