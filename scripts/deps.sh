#!/usr/bin/env bash
# Installs what Vireo needs on a Debian (bookworm) host, idempotently: nothing is downloaded
# when everything is already there. Used by scripts/run.sh and scripts/test.sh.
set -euo pipefail

# Debian packages Vireo runs or builds guests from (chromium: the UI's browser tests;
# isc-dhcp-client: the real DHCPv6 test's client).
PKGS=(qemu-system-x86 qemu-utils ovmf busybox-static qemu-guest-agent dnsmasq-base nftables openvswitch-switch
      iproute2 e2fsprogs time procps grub-pc-bin grub-efi-amd64-bin grub-common mtools dosfstools fdisk
      genisoimage xorriso chromium debootstrap isc-dhcp-client)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# qemu-img and qemu-system must come from the same QEMU release. Some hosts carry a newer
# backported qemu-utils that conflicts with bookworm's qemu-system-x86; install the pair from
# the distribution release that has qemu-system-x86.
qemu_pair_mismatch() {
  command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null || return 0
  local a b
  a=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9.]*\).*/\1/p' | head -1)
  b=$(qemu-img --version | sed -n 's/.*version \([0-9.]*\).*/\1/p' | head -1)
  [ "$a" != "$b" ]
}

if [ ${#missing[@]} -gt 0 ] || qemu_pair_mismatch; then
  echo "vireo: installing Debian packages: ${missing[*]:-qemu pair}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  release=$(apt-cache policy qemu-system-x86 | awk '/Candidate/ {print $2}')
  # Pin qemu-utils (and its block modules) to the qemu-system-x86 candidate's version.
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "${PKGS[@]/qemu-utils/qemu-utils=$release}" "qemu-block-extra=$release" >/dev/null
fi

# The tiny guest's kernel comes from this package's download (not installed on the host);
# make sure the package lists know it.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  apt-get update -qq
fi

if ! command -v cargo >/dev/null; then
  echo "vireo: cargo (Rust toolchain) is required" >&2
  exit 1
fi
