#!/usr/bin/env bash
# The build artifact both environments deploy: .aws-sam/build as one tarball whose sha256 the
# build job records (a job output, kept by GitHub apart from the artifact store), and which each
# deploy job checks before it extracts anything or assumes any role.
#
#   sam/artifact.sh pack   <build-dir> <tarball>             prints the tarball's sha256
#   sam/artifact.sh verify <tarball> <sha256> <build-dir>    refuses a mismatch, else extracts
#
# The tarball is reproducible (sorted names, fixed owner and mtime, gzip without a timestamp):
# the same build gives the same digest. sam deploy's own zips do not use file mtimes.
set -euo pipefail

die() { echo "artifact: $*" >&2; exit 1; }

case "${1:-}" in
  pack)
    src="${2:?usage: sam/artifact.sh pack <build-dir> <tarball>}"
    out="${3:?usage: sam/artifact.sh pack <build-dir> <tarball>}"
    [[ -f "$src/template.yaml" ]] || die "$src has no template.yaml: run make build first"
    tar --sort=name --mtime='2000-01-01 00:00:00Z' --owner=0 --group=0 --numeric-owner \
      --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
      -C "$src" -cf - . | gzip -9 -n > "$out"
    sha256sum "$out" | cut -d' ' -f1
    ;;
  verify)
    tarball="${2:?usage: sam/artifact.sh verify <tarball> <sha256> <build-dir>}"
    expected="${3:-}"
    dest="${4:?usage: sam/artifact.sh verify <tarball> <sha256> <build-dir>}"
    [[ "$expected" =~ ^[0-9a-f]{64}$ ]] || die "expected digest '${expected}' is not a sha256"
    actual="$(sha256sum "$tarball" | cut -d' ' -f1)"
    [[ "$actual" == "$expected" ]] || die "$tarball has sha256 $actual, the build recorded $expected"
    rm -rf "$dest"
    mkdir -p "$dest"
    tar -xzf "$tarball" -C "$dest" --no-same-owner --no-same-permissions
    [[ -f "$dest/template.yaml" ]] || die "$tarball holds no template.yaml"
    echo "artifact: $tarball sha256 $actual verified, extracted to $dest"
    ;;
  *)
    die "usage: sam/artifact.sh pack <build-dir> <tarball> | verify <tarball> <sha256> <build-dir>"
    ;;
esac
