#!/bin/sh
# Assembles the root file systems of logship's FROM-scratch images, for docker/Dockerfile and for
# the tests that build the images with podman from binaries built on the host (so what is tested
# is what ships).
#
#   docker/rootfs.sh DEST LOGSHIP LOGSHIP_INJECT
#
# makes DEST/sidecar (the logship sidecar) and DEST/inject (the admission webhook), each with:
#   /usr/local/bin/<binary>                 static (no libc, no loader: it also runs inside any Spark
#                                           image, where `logship install` copies it for wrap mode)
#   /etc/passwd, /etc/group                 root and logship (999:1000, EMR's fluentd user)
#   /etc/ssl/certs/ca-certificates.crt      the CA bundle, for the AWS SDK's TLS (rustls-native-certs)
#   /tmp                                    1777, an empty mount point (the pod mounts an emptyDir)
set -eu

if [ "$#" -ne 3 ]; then
  echo "usage: $0 DEST LOGSHIP LOGSHIP_INJECT" >&2
  exit 2
fi
dest=$1
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$ca" ] || { echo "$0: no CA bundle at $ca (set CA_BUNDLE)" >&2; exit 1; }

for bin in "$2" "$3"; do
  [ -x "$bin" ] || { echo "$0: $bin is not an executable" >&2; exit 1; }
  # A dynamically linked binary names its loader in a PT_INTERP header ("Requesting program
  # interpreter"); in a FROM-scratch image it would fail with a bare "no such file or directory".
  if command -v readelf >/dev/null 2>&1 && readelf -l "$bin" | grep -q 'program interpreter'; then
    echo "$0: $bin is dynamically linked; build it for x86_64-unknown-linux-musl" >&2
    exit 1
  fi
done

make_root() { # make_root DIR BINARY
  root=$1
  rm -rf "$root"
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
  chmod 1777 "$root/tmp"
  install -m 0755 "$2" "$root/usr/local/bin/$(basename "$2")"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nlogship:x:999:1000:logship:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nlogship:x:1000:\n' >"$root/etc/group"
  install -m 0644 "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
}

make_root "$dest/sidecar" "$2"
make_root "$dest/inject" "$3"
