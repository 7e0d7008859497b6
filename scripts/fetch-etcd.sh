#!/usr/bin/env bash
# Puts etcd 3.4 (Debian's etcd-server package) under target/etcd for the
# rsocket-balance-etcd tests. The package is downloaded and unpacked, not
# installed: installing it may start a system daemon on fixed ports. The
# tests run their own etcd on 127.0.0.1 with port 0.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/etcd
bin="$dest/usr/bin/etcd"
if [ ! -x "$bin" ]; then
    tmp=$(mktemp -d)
    chmod 755 "$tmp"
    if ! (cd "$tmp" && apt-get download etcd-server >/dev/null 2>&1); then
        apt-get update -qq
        (cd "$tmp" && apt-get download etcd-server >/dev/null)
    fi
    mkdir -p "$dest"
    dpkg-deb -x "$tmp"/etcd-server_*.deb "$dest"
    rm -rf "$tmp"
fi
"$bin" --version | sed -n 1p # sed reads all: `head -1` could leave etcd to die of SIGPIPE (141 under pipefail)
