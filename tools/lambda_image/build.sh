#!/usr/bin/env bash
# Build a LOCAL STAND-IN for the AWS Lambda python3.13 base image, tagged with the name
# `sam local invoke` looks for: public.ecr.aws/lambda/python:3.13-<x86_64|arm64> (the
# machine's own architecture). A test aid for machines that cannot pull the real image; users
# with internet simply pull the real one. See README.md beside this script.
#
#   tools/lambda_image/build.sh [--force]
#
# What goes in: Debian bookworm (debootstrap --variant=minbase), a CPython 3.13 copied to the
# same absolute path it has here (a shared-library build, found through its RUNPATH), and
# /var/runtime with awslambdaric and the runtime's boto3 from PyPI plus a small bootstrap.
# Idempotent: an existing image of that name is kept unless --force (or FORCE=1) is given.
#
# Environment: PYTHON313 (a python3.13 binary; default pyenv's 3.13.0), DEBIAN_MIRROR,
# AWSLAMBDARIC_VERSION, IMAGE (the tag, default as above), TMPDIR. Needs root (debootstrap),
# debootstrap (apt-get install debootstrap) and a Docker daemon that answers.
set -euo pipefail

die() { echo "lambda_image/build.sh: error: $*" >&2; exit 1; }
say() { echo "lambda_image/build.sh: $*" >&2; }

force="${FORCE:-0}"
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  -h|--help) sed -n 2,16p "$0"; exit 0 ;;
  *) die "unknown argument: $1 (usage: build.sh [--force])" ;;
esac

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
case "$(uname -m)" in
  x86_64|amd64) arch=x86_64; pip_platform=manylinux2014_x86_64 ;;
  aarch64|arm64) arch=arm64; pip_platform=manylinux2014_aarch64 ;;
  *) die "unsupported machine architecture $(uname -m) (Lambda has x86_64 and arm64)" ;;
esac
image="${IMAGE:-public.ecr.aws/lambda/python:3.13-${arch}}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ric_version="${AWSLAMBDARIC_VERSION:-4.2.2}"

command -v docker >/dev/null || die "no docker command: install Docker (Debian: apt-get install docker.io)"
if ! timeout 20 docker info >/dev/null 2>&1; then
  die "Docker does not answer ('docker info' failed): start the daemon (e.g. dockerd &) and retry"
fi
if [[ "$force" != 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
  say "$image already exists; kept (use --force to rebuild)"
  exit 0
fi

[[ "$(id -u)" == 0 ]] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"

if [[ -z "${PYTHON313:-}" ]]; then
  command -v pyenv >/dev/null || die "set PYTHON313 to a python3.13 binary (no pyenv found)"
  PYTHON313="$(pyenv root)/versions/3.13.0/bin/python3.13"
fi
[[ -x "$PYTHON313" ]] || die "no python3.13 at $PYTHON313 (set PYTHON313)"
read -r py_version py_prefix py_shared < <(
  "$PYTHON313" -c 'import sys, sysconfig; print("%d.%d" % sys.version_info[:2], sys.base_prefix, sysconfig.get_config_var("Py_ENABLE_SHARED") or 0)'
)
[[ "$py_version" == 3.13 ]] || die "$PYTHON313 is Python $py_version, not 3.13"
[[ "$py_prefix" == /* && "$py_prefix" != / ]] || die "odd prefix $py_prefix for $PYTHON313"
say "image $image from Debian bookworm ($mirror), Python $py_version at $py_prefix (shared=$py_shared), awslambdaric $ric_version"

boto3_pin="$(grep -E '^boto3==' "$repo_root/requirements/runtime.txt" || true)"
[[ -n "$boto3_pin" ]] || die "no boto3 pin in requirements/runtime.txt"

started=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/lambda-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

# The libraries the interpreter's extension modules link (ssl, ctypes, sqlite3, bz2, lzma,
# readline, curses, uuid, zlib, expat) and the CA bundle; the Lambda image has them too.
packages=ca-certificates,libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,libreadline8,libncursesw6,libuuid1,zlib1g,libexpat1
say "debootstrap (minbase bookworm) ..."
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

say "copying Python from $py_prefix ..."
mkdir -p "$rootfs$py_prefix"
# Not copied: the test suite, IDLE/tkinter, the static library, and site-packages (whatever
# is installed into this machine's interpreter is not part of the Lambda runtime).
tar -C "$py_prefix" \
  --exclude="./lib/python$py_version/test" --exclude="./lib/python$py_version/idlelib" \
  --exclude="./lib/python$py_version/tkinter" --exclude="./lib/python$py_version/turtledemo" \
  --exclude="./lib/python$py_version/site-packages/*" --exclude='*.a' \
  -cf - . | tar -C "$rootfs$py_prefix" -xf -
mkdir -p "$rootfs$py_prefix/lib/python$py_version/site-packages"
# Every directory above the prefix must be traversable (e.g. /root/.pyenv).
d="$py_prefix"
while [[ "$d" != / ]]; do chmod o+x "$rootfs$d"; d="$(dirname "$d")"; done
mkdir -p "$rootfs/var/lang/bin" "$rootfs/var/runtime" "$rootfs/var/task" "$rootfs/opt"
for name in python3.13 python3 python; do ln -s "$py_prefix/bin/python3.13" "$rootfs/var/lang/bin/$name"; done

say "installing awslambdaric $ric_version and $boto3_pin into /var/runtime ..."
"$PYTHON313" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-compile \
  --only-binary=:all: --platform "$pip_platform" --python-version 3.13 --implementation cp \
  --target "$rootfs/var/runtime" -c "$repo_root/requirements/lock.txt" \
  "awslambdaric==$ric_version" "$boto3_pin"

cat >"$rootfs/var/runtime/bootstrap" <<'SH'
#!/bin/sh
# Stand-in runtime bootstrap (tools/lambda_image): the runtime interface emulator runs this.
export AWS_EXECUTION_ENV=AWS_Lambda_python3.13
exec /var/lang/bin/python3.13 /var/runtime/bootstrap.py "$@"
SH
cat >"$rootfs/var/runtime/bootstrap.py" <<'PY'
"""Stand-in for the Lambda python3.13 runtime bootstrap (test aid, tools/lambda_image).

Lambda's module search order: the function code, the layers, then the runtime's own
packages (awslambdaric, boto3) in /var/runtime, then the standard library.
"""

import os
import sys

task_root = os.environ.get("LAMBDA_TASK_ROOT", "/var/task")
runtime_dir = os.environ.get("LAMBDA_RUNTIME_DIR", "/var/runtime")
front = [task_root, "/opt/python/lib/python3.13/site-packages", "/opt/python", runtime_dir]
sys.path[:] = front + [p for p in sys.path if p not in front and p != os.path.dirname(__file__)]
os.chdir(task_root)

from awslambdaric.__main__ import main  # noqa: E402

main([sys.argv[0], os.environ["_HANDLER"]])
PY
chmod 755 "$rootfs/var/runtime/bootstrap"
cat >"$rootfs/lambda-entrypoint.sh" <<'SH'
#!/bin/sh
# Stand-in entrypoint: SAM replaces it with its own runtime interface emulator.
if [ $# -ge 1 ]; then export _HANDLER="$1"; fi
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ] && [ -x /usr/local/bin/aws-lambda-rie ]; then
  exec /usr/local/bin/aws-lambda-rie /var/runtime/bootstrap
fi
exec /var/runtime/bootstrap
SH
chmod 755 "$rootfs/lambda-entrypoint.sh"

# Smaller image: package caches, docs, manuals, locales.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*

say "checking the interpreter inside the root file system ..."
chroot "$rootfs" /var/lang/bin/python3.13 -c 'import ssl, ctypes, sqlite3, bz2, lzma, uuid, zlib, pyexpat, sys; sys.path.insert(0, "/var/runtime"); import awslambdaric, boto3' \
  || die "the copied interpreter does not run inside the image"

say "docker import ..."
tar -C "$rootfs" --numeric-owner -cf - . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV TZ=:/etc/localtime' \
  --change 'ENV PATH=/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin' \
  --change 'ENV LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib' \
  --change 'ENV LAMBDA_TASK_ROOT=/var/task' \
  --change 'ENV LAMBDA_RUNTIME_DIR=/var/runtime' \
  --change 'WORKDIR /var/task' \
  --change 'ENTRYPOINT ["/lambda-entrypoint.sh"]' \
  --message "local stand-in for the Lambda python3.13 image (tools/lambda_image/build.sh)" \
  - "$image" >/dev/null
say "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')) in $((SECONDS - started)) s"
# SAM CLI derives its invoke images (base + runtime emulator + layers) from this one and reuses
# them by name: drop those built on a previous base so the next invoke rebuilds on this one.
stale="$(docker image ls --format '{{.Repository}}:{{.Tag}}' "samcli/lambda-python" | grep -E ":3\.13-${arch}-" || true)"
if [[ -n "$stale" ]]; then
  say "removing SAM CLI images derived from the previous base: $(echo "$stale" | tr '\n' ' ')"
  echo "$stale" | xargs docker image rm >/dev/null || say "could not remove some of them (in use?)"
fi
