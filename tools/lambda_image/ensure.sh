#!/usr/bin/env bash
# Make sure the Lambda python3.13 base image that `sam local invoke` derives its images from
# is on this machine, for its own architecture: kept if present, else pulled (the real image,
# public.ecr.aws/lambda/python:3.13-<arch>; no credentials needed), else, when it cannot be
# pulled (no internet, like our CI), the local stand-in is built (build.sh beside this script,
# a test aid; see README.md).
#
#   tools/lambda_image/ensure.sh
#
# Environment: PULL_TIMEOUT (seconds for `docker pull`, default 300), and build.sh's.
set -euo pipefail

die() { echo "lambda_image/ensure.sh: error: $*" >&2; exit 1; }
say() { echo "lambda_image/ensure.sh: $*" >&2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v docker >/dev/null || die "no docker command: install Docker (Debian: apt-get install docker.io)"
if ! timeout 20 docker info >/dev/null 2>&1; then
  die "Docker does not answer ('docker info' failed): start the daemon (e.g. dockerd &) and retry"
fi
case "$(uname -m)" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) die "unsupported machine architecture $(uname -m) (Lambda has x86_64 and arm64)" ;;
esac
image="public.ecr.aws/lambda/python:3.13-${arch}"

if docker image inspect "$image" >/dev/null 2>&1; then
  say "$image is present"
  exit 0
fi
say "pulling $image ..."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if timeout "${PULL_TIMEOUT:-300}" docker pull --quiet "$image" >/dev/null 2>"$log"; then
  say "pulled $image"
  exit 0
fi
say "cannot pull $image ($(tail -n 1 "$log")); building the local stand-in instead"
"$here/build.sh"
