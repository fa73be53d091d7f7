#!/usr/bin/env bash
# Build local stand-ins for the public base images on a machine that reaches Debian's apt
# mirror and PyPI but no container registry (run as root, with podman or docker):
#
#   localhost/python-base      for python:3.11-slim   (Debian bookworm + python3 + venv)
#   localhost/postgres-standin for postgres:16-alpine (Debian's PostgreSQL 15, same env vars)
#   localhost/redis-standin    for redis:7-alpine     (Debian's Redis 7)
#
# Then: BASE_IMAGE=localhost/python-base POSTGRES_IMAGE=localhost/postgres-standin \
#       REDIS_IMAGE=localhost/redis-standin docker/smoke.sh
# Extra CA certificates in /usr/local/share/ca-certificates (a TLS-inspecting egress proxy)
# are copied into the base, so pip inside the builds trusts the same roots as this host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
ROOTFS=${ROOTFS:-/var/tmp/hyfunc-standin-rootfs}
NET=()
[ "$ENGINE" = podman ] && NET=(--network host)

if ! "$ENGINE" image exists localhost/python-base 2>/dev/null && \
   ! "$ENGINE" image inspect localhost/python-base >/dev/null 2>&1; then
  if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,passwd,ca-certificates \
      "$SUITE" "$ROOTFS" "$MIRROR"
  fi
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >/dev/null
  fi
  chroot "$ROOTFS" apt-get clean
  rm -rf "$ROOTFS"/var/lib/apt/lists/*
  tar -C "$ROOTFS" -c . | "$ENGINE" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' - localhost/python-base
fi
for target in postgres redis; do
  "$ENGINE" build "${NET[@]}" -f "$here/Containerfile" --target "$target" \
    --build-arg BASE_IMAGE=localhost/python-base -t "localhost/$target-standin" "$here"
done
"$ENGINE" images --filter reference='localhost/*'
