"""Check a downloaded Amazon RDS CA bundle before it ships in the Lambda layer.

``make rds-ca`` downloads the RDS global bundle over HTTPS (the web PKI vouches for the host)
and runs this on the download before moving it into ``shared/totes/certs/``. It refuses
anything that is not a plain bundle of Amazon RDS certificate authorities: an error page, a
truncated or empty file, a leaf certificate, a private key, a certificate of any other
issuer, or a bundle whose every certificate has expired. With ``--sha256`` (the build job
passes the repository variable RDS_CA_SHA256 when it is set) the bundle must also be exactly
the one an operator reviewed before; a new bundle from AWS then fails the build until it is
reviewed and the variable updated. It prints the bundle's sha256 either way, for the build log.

Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path

PEM_BLOCK = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END CERTIFICATE-----"
)
RDS_ORGANIZATION = "Amazon Web Services, Inc."
RDS_UNIT = "Amazon RDS"
MAX_BYTES = 1 << 20  # the real bundle is ~170 KB


class BundleRefused(ValueError):
    """The file is not an acceptable RDS CA bundle."""


def _name(cert: dict, field: str) -> dict[str, str]:
    return {key: value for rdn in cert.get(field, ()) for key, value in rdn}


def check_bundle(
    data: bytes, *, min_certs: int = 10, sha256: str | None = None, now: datetime | None = None
) -> dict:
    """The bundle's summary (sha256, certificate count, newest expiry); BundleRefused if any
    rule fails."""
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256.strip().lower():
        raise BundleRefused(f"sha256 {digest} is not the reviewed bundle's {sha256.strip()}")
    if not data or len(data) > MAX_BYTES:
        raise BundleRefused(f"size {len(data)} bytes is outside 1..{MAX_BYTES}")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise BundleRefused("not ASCII text (PEM)") from None
    blocks = PEM_BLOCK.findall(text)
    leftover = PEM_BLOCK.sub("", text)
    if leftover.strip():
        raise BundleRefused(f"holds something besides certificates: {leftover.strip()[:60]!r}")
    if len(blocks) < min_certs:
        raise BundleRefused(f"{len(blocks)} certificates, expected at least {min_certs}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=text)
    except ssl.SSLError as exc:
        raise BundleRefused(f"a certificate does not parse: {exc}") from None
    stats = context.cert_store_stats()
    if stats["x509"] != len(blocks):
        raise BundleRefused(f"{len(blocks)} PEM blocks but {stats['x509']} distinct certificates")
    authorities = context.get_ca_certs()
    if stats["x509_ca"] != len(blocks) or len(authorities) != len(blocks):
        raise BundleRefused(
            f"{len(blocks) - stats['x509_ca']} of {len(blocks)} certificates are not CAs"
        )
    for cert in authorities:
        subject, issuer = _name(cert, "subject"), _name(cert, "issuer")
        for role, name in (("subject", subject), ("issuer", issuer)):
            if (name.get("organizationName"), name.get("organizationalUnitName")) != (
                RDS_ORGANIZATION,
                RDS_UNIT,
            ):
                raise BundleRefused(
                    f"certificate {subject.get('commonName', '?')!r}: {role} is not "
                    f"O={RDS_ORGANIZATION}, OU={RDS_UNIT}"
                )
    now = now or datetime.now(UTC)
    expiries = [
        datetime.fromtimestamp(ssl.cert_time_to_seconds(c["notAfter"]), UTC) for c in authorities
    ]
    if max(expiries) <= now:
        raise BundleRefused("every certificate has expired")
    return {"sha256": digest, "certificates": len(blocks), "newest_expiry": max(expiries)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--sha256", default="", help="the reviewed bundle's sha256 (optional)")
    parser.add_argument("--min-certs", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        summary = check_bundle(
            args.bundle.read_bytes(), min_certs=args.min_certs, sha256=args.sha256 or None
        )
    except BundleRefused as exc:
        print(f"{args.bundle}: refused: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.bundle}: {summary['certificates']} Amazon RDS CA certificates, "
        f"newest expires {summary['newest_expiry']:%Y-%m-%d}, sha256 {summary['sha256']}"
        + (" (the reviewed bundle)" if args.sha256 else " (no RDS_CA_SHA256 pin set)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
