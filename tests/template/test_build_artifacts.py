"""What the build job ships and the deploy jobs trust: the RDS CA bundle check (sam/rds_ca.py)
and the build tarball with its recorded digest (sam/artifact.sh). Offline: certificates are
made here with `cryptography`; nothing is downloaded."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import tarfile
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sam_template import REPO_ROOT

_spec = importlib.util.spec_from_file_location("rds_ca", REPO_ROOT / "sam" / "rds_ca.py")
rds_ca = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rds_ca)

ARTIFACT = REPO_ROOT / "sam" / "artifact.sh"
NOW = datetime(2026, 11, 29, tzinfo=UTC)
RDS = {"org": "Amazon Web Services, Inc.", "unit": "Amazon RDS"}


def _name(cn: str, org: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_cert(
    cn: str,
    *,
    ca: bool = True,
    org: str = RDS["org"],
    unit: str = RDS["unit"],
    not_after: datetime = NOW + timedelta(days=3650),
) -> bytes:
    """A self-signed certificate (a CA unless ca=False) in PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn, org, unit)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=365 * 3))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def regional_roots() -> list[bytes]:
    return [make_cert(f"Amazon RDS test-{i} Root CA ECC384 G1") for i in range(3)]


def check(data: bytes, **kwargs) -> dict:
    return rds_ca.check_bundle(data, min_certs=kwargs.pop("min_certs", 3), now=NOW, **kwargs)


def test_a_bundle_of_rds_certificate_authorities_is_accepted_with_its_digest(regional_roots):
    data = b"".join(regional_roots)

    summary = check(data)

    assert summary["sha256"] == hashlib.sha256(data).hexdigest()
    assert summary["certificates"] == 3
    assert check(data, sha256=summary["sha256"].upper())["certificates"] == 3


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("empty", "size 0"),
        ("html_error_page", "besides certificates"),
        ("truncated", "besides certificates"),
        ("private_key_appended", "besides certificates"),
        ("leaf_certificate", "not CAs"),
        ("other_issuer", "is not O=Amazon Web Services, Inc., OU=Amazon RDS"),
        ("all_expired", "every certificate has expired"),
        ("too_few", "expected at least 3"),
        ("duplicate", "distinct certificates"),
        ("not_the_reviewed_bundle", "is not the reviewed bundle's"),
    ],
)
def test_anything_but_a_genuine_looking_rds_bundle_is_refused(regional_roots, case, reason):
    good = b"".join(regional_roots)
    bundles = {
        "empty": b"",
        "html_error_page": b"<!DOCTYPE html><html><body>Service Unavailable</body></html>\n",
        "truncated": good[: len(good) - 40],
        "private_key_appended": good
        + b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
        "leaf_certificate": good + make_cert("pipeline.example.com", ca=False),
        "other_issuer": good + make_cert("Totally RDS Root CA", org="Example Ltd", unit="IT"),
        "all_expired": b"".join(
            make_cert(f"Amazon RDS old-{i} CA", not_after=NOW - timedelta(days=1)) for i in range(3)
        ),
        "too_few": regional_roots[0],
        "duplicate": good + regional_roots[0],
        "not_the_reviewed_bundle": good,
    }
    pin = {"sha256": "0" * 64} if case == "not_the_reviewed_bundle" else {}

    with pytest.raises(rds_ca.BundleRefused, match=reason):
        check(bundles[case], **pin)


def test_the_checker_exits_nonzero_and_names_the_reason(tmp_path, regional_roots):
    bundle = tmp_path / "global-bundle.pem"
    bundle.write_bytes(b"".join(regional_roots) + make_cert("intruder", ca=False))

    refused = rds_ca.main([str(bundle), "--min-certs", "3"])
    bundle.write_bytes(b"".join(regional_roots))
    accepted = rds_ca.main([str(bundle), "--min-certs", "3"])

    assert (refused, accepted) == (1, 0)


def test_make_rds_ca_checks_the_download_before_it_replaces_the_layers_bundle():
    dry = subprocess.run(
        ["make", "-n", "-B", "rds-ca", "RDS_CA_SHA256=ab12"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    download = next(i for i, line in enumerate(dry) if line.startswith("curl"))
    checked = next(i for i, line in enumerate(dry) if "sam/rds_ca.py" in line)
    moved = next(i for i, line in enumerate(dry) if line.startswith("mv "))
    assert download < checked < moved
    assert "--proto '=https'" in dry[download]
    assert "rds-global-bundle.pem.download" in dry[download]
    assert '--sha256 "ab12"' in dry[checked]
    assert dry[moved].endswith("shared/totes/certs/rds-global-bundle.pem")


# ------------------------------------------------------------------ the build tarball


@pytest.fixture
def build_dir(tmp_path):
    root = tmp_path / "build"
    (root / "IngestFunction").mkdir(parents=True)
    (root / "template.yaml").write_text("Resources: {}\n")
    (root / "IngestFunction" / "app.py").write_text("def handler(event, context): ...\n")
    return root


def artifact(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ARTIFACT), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_the_build_tarball_is_reproducible_and_its_digest_is_the_files(tmp_path, build_dir):
    first = artifact("pack", build_dir, tmp_path / "a.tar.gz")
    second = artifact("pack", build_dir, tmp_path / "b.tar.gz")

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    digest = first.stdout.strip()
    assert digest == second.stdout.strip()
    assert digest == hashlib.sha256((tmp_path / "a.tar.gz").read_bytes()).hexdigest()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert sorted(tar.getnames()) == [
            ".",
            "./IngestFunction",
            "./IngestFunction/app.py",
            "./template.yaml",
        ]


def test_a_deploy_extracts_the_tarball_only_when_its_digest_is_the_recorded_one(
    tmp_path, build_dir
):
    tarball = tmp_path / "sam-build.tar.gz"
    digest = artifact("pack", build_dir, tarball).stdout.strip()
    dest = tmp_path / "deploy" / ".aws-sam" / "build"

    tampered = tmp_path / "tampered.tar.gz"
    (build_dir / "IngestFunction" / "app.py").write_text("import os; os.system('curl evil')\n")
    artifact("pack", build_dir, tampered)
    refused = artifact("verify", tampered, digest, dest)
    malformed = artifact("verify", tarball, "", dest)
    assert (refused.returncode, malformed.returncode) != (0, 0)
    assert "the build recorded" in refused.stderr
    assert "is not a sha256" in malformed.stderr
    assert not dest.exists()

    accepted = artifact("verify", tarball, digest, dest)
    assert accepted.returncode == 0, accepted.stderr
    assert (dest / "IngestFunction" / "app.py").read_text().startswith("def handler")


def test_packing_refuses_a_directory_that_is_not_a_sam_build(tmp_path):
    result = artifact("pack", tmp_path, tmp_path / "x.tar.gz")
    assert result.returncode != 0
    assert "no template.yaml" in result.stderr
