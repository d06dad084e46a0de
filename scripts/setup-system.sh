#!/usr/bin/env bash
# Installs the Debian packages gureum needs, and refreshes the apt lists the image builder reads
# (the tiny image is built from Debian packages fetched with apt-get download).
set -euo pipefail
packages=(qemu-system-x86 qemu-utils e2fsprogs cpio kmod iproute2 nftables dnsmasq-base iputils-ping acl
          mmdebstrap openssh-client ovmf
          debootstrap extlinux syslinux-common fdisk dosfstools mtools
          gcc runc
          chromium
          postgresql-15
          python3 python3-venv python3-pip
          ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
fresh_lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -1)
if [ -z "$fresh_lists" ] || [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get update"
  apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
