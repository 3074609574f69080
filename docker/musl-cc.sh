#!/bin/sh
# A C compiler for the x86_64-unknown-linux-musl build (the C parts of zstd, ring and aws-lc), set
# up in a directory of the build's own instead of installing Debian's musl-tools on the host:
# the `musl` package installs /lib/ld-musl-x86_64.so.1, and snappy-java (Spark, Hadoop, Kafka)
# then takes the host for a musl system and loads a library the host cannot run.
#
#   CC_x86_64_unknown_linux_musl=$(docker/musl-cc.sh target/musl-cc) \
#     cargo build --release --target x86_64-unknown-linux-musl ...
#
# Downloads Debian's musl, musl-dev and musl-tools packages (apt-get download, no install),
# unpacks them into DIR, and prints the path of a musl-gcc wrapper whose specs file points
# into DIR. Does nothing but print the path when DIR is already set up.
set -eu
[ "$#" -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
dir=$(cd "$1" && pwd)
cc=$dir/musl-gcc
if [ ! -x "$cc" ]; then
  rm -rf "$dir/debs" "$dir/root"
  mkdir -p "$dir/debs"
  (cd "$dir/debs" && apt-get download musl musl-dev musl-tools >/dev/null 2>"$dir/debs/apt.log") || {
    cat "$dir/debs/apt.log" >&2
    echo "$0: cannot download Debian's musl packages (apt-get update first?)" >&2
    exit 1
  }
  for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
  sed -e "s#/usr/include/x86_64-linux-musl#$dir/root/usr/include/x86_64-linux-musl#g" \
      -e "s#/usr/lib/x86_64-linux-musl#$dir/root/usr/lib/x86_64-linux-musl#g" \
      "$dir/root/usr/lib/x86_64-linux-musl/musl-gcc.specs" >"$dir/musl-gcc.specs"
  printf '#!/bin/sh\nexec "${REALGCC:-gcc}" "$@" -specs "%s"\n' "$dir/musl-gcc.specs" >"$cc.tmp"
  chmod +x "$cc.tmp"
  mv "$cc.tmp" "$cc"
fi
echo "$cc"
