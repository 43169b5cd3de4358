"""The AdbcLayer (issue 16): the ADBC PostgreSQL driver for ingest, built by its own Makefile
(layers/adbc) from a hash-pinned lock, stripped for arm64, attached to the ingest function
only, and small enough that ingest with all its layers stays under Lambda's unzipped limit.

The deployed build is arm64 and cannot run here; the same lock built for this machine's
architecture by the same Makefile is imported the way Lambda lays layers out (the layer's
python/ first, pyarrow from elsewhere: the pandas layer's) and queries a real PostgreSQL."""

from __future__ import annotations

import json
import os
import platform
import re
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from sam_template import (
    LAMBDA_UNZIPPED_LIMIT,
    PANDAS_LAYER_BYTES,
    POWERTOOLS_LAYER_BYTES,
    REPO_ROOT,
    resources_of,
)

LAYER_DIR = REPO_ROOT / "layers" / "adbc"
PACKAGES = {"adbc-driver-manager": "1.13.0", "adbc-driver-postgresql": "1.13.0"}
# What ingest with all its layers must leave free of the limit: the pandas and Powertools
# figures are estimates (sam_template.py), so the check keeps room for their error.
SPARE_BYTES = 5 * 1024 * 1024
EM_AARCH64 = 183
EM_X86_64 = 62


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def elf(path: Path) -> tuple[int, set[str]]:
    """A 64-bit little-endian ELF file's machine (e_machine) and section names."""
    data = path.read_bytes()
    assert data[:6] == b"\x7fELF\x02\x01", f"{path.name}: not ELF64 LE"
    machine = struct.unpack_from("<H", data, 0x12)[0]
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    strings = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)[0]
    names = set()
    for i in range(shnum):
        start = strings + struct.unpack_from("<I", data, shoff + i * shentsize)[0]
        names.add(data[start : data.index(b"\0", start)].decode())
    return machine, names


def unstripped(sections: set[str]) -> set[str]:
    return {s for s in sections if s == ".symtab" or s.startswith(".debug")}


# ------------------------------------------------------------------ the template


def test_the_layer_is_built_by_its_makefile_for_arm64_and_only_ingest_has_it(template, expanded):
    layer = template["Resources"]["AdbcLayer"]
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    assert layer["Properties"]["ContentUri"] == "layers/adbc/"
    (name,) = [n for n in resources_of(expanded, "AWS::Lambda::LayerVersion") if "Adbc" in n]
    props = expanded["Resources"][name]["Properties"]
    assert (props["CompatibleRuntimes"], props["CompatibleArchitectures"]) == (
        ["python3.13"],
        ["arm64"],
    )
    adbc = {"Fn::If": ["HasAdbcLayerArn", {"Ref": "AdbcLayerArn"}, {"Ref": name}]}
    holders = {
        n: r["Properties"].get("Layers", [])
        for n, r in resources_of(expanded, "AWS::Lambda::Function").items()
    }
    assert holders["IngestFunction"][-1] == adbc  # last: the shared three keep their order
    assert [n for n, layers in holders.items() if adbc in layers or name in json.dumps(layers)] == [
        "IngestFunction"
    ]
    # Deployments use the built layer; only local runs name another (sam_local.py)
    assert template["Parameters"]["AdbcLayerArn"]["Default"] == ""
    assert expanded["Conditions"]["HasAdbcLayerArn"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AdbcLayerArn"}, ""]}]
    }


@pytest.mark.parametrize("name", ["requirements.in", "requirements.lock"])
def test_the_layers_packages_are_pinned_with_hashes(name):
    text = (LAYER_DIR / name).read_text()
    entries = [e for e in re.split(r"\n(?=[A-Za-z])", text) if e.strip() and not e.startswith("#")]
    pins = {e.split("==")[0]: e.split("==")[1].split()[0] for e in entries}
    assert pins == PACKAGES  # and nothing else: pyarrow, numpy, typing-extensions come from
    if name == "requirements.lock":  # the pandas layer or are not needed (requirements.in)
        for entry in entries:
            assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), entry.splitlines()[0]


def test_the_layer_ships_the_versions_the_tests_run():
    """requirements/lock.txt pins what the test environment installs; where it names the ADBC
    packages, the layer pins the same versions."""
    lock = (REPO_ROOT / "requirements" / "lock.txt").read_text().lower()
    pinned = {n: m[1] for n in PACKAGES if (m := re.search(rf"^{n}==([^\s;\\]+)", lock, re.M))}
    if not pinned:
        pytest.skip("requirements/lock.txt does not pin the ADBC packages (yet)")
    assert pinned == {n: PACKAGES[n] for n in pinned}


# ------------------------------------------------------------------ the build (sam build)


def test_the_built_layer_holds_the_two_drivers_stripped_for_arm64_and_no_pyarrow(sam_build):
    python = sam_build / "AdbcLayer" / "python"  # /opt/python in Lambda, on sys.path
    shipped = {p.name for p in python.iterdir()}
    assert shipped == {
        "adbc_driver_manager",
        "adbc_driver_postgresql",
        "adbc_driver_manager-1.13.0.dist-info",
        "adbc_driver_postgresql-1.13.0.dist-info",
    }
    assert not [p for p in python.rglob("*") if p.suffix in (".pyx", ".pxd", ".cc", ".h", ".hpp")]
    libraries = sorted(python.rglob("*.so"))
    assert [p.name for p in libraries if p.parent.name == "adbc_driver_postgresql"] == [
        "libadbc_driver_postgresql.so"
    ]
    for library in libraries:
        machine, sections = elf(library)
        assert machine == EM_AARCH64, library.name
        assert unstripped(sections) == set(), library.name


def test_ingest_with_all_its_layers_fits_lambdas_unzipped_limit(sam_build):
    """Lambda refuses a function whose package and layers exceed 262,144,000 bytes unzipped.
    Ingest: its package, the pandas layer (estimate), the Powertools layer (estimate), the totes
    layer and the ADBC layer (both measured from the build), with SPARE_BYTES to spare."""
    sizes = {
        "IngestFunction": _size(sam_build / "IngestFunction"),
        "pandas (estimate)": PANDAS_LAYER_BYTES,
        "powertools (estimate)": POWERTOOLS_LAYER_BYTES,
        "TotesLayer": _size(sam_build / "TotesLayer"),
        "AdbcLayer": _size(sam_build / "AdbcLayer"),
    }
    assert sizes["AdbcLayer"] < 12 * 1024 * 1024, sizes  # unstripped it is about 26 MB
    assert sum(sizes.values()) <= LAMBDA_UNZIPPED_LIMIT - SPARE_BYTES, sizes


# ------------------------------------------------------------------ the same lock, run here


@pytest.fixture(scope="module")
def native_layer(tmp_path_factory) -> Path:
    """The Makefile's build of the lock for this machine's architecture (as sam-local does),
    for CPython 3.13 (Lambda's python3.13; CI's interpreter, .ci/python)."""
    if sys.version_info[:2] != (3, 13):
        pytest.skip(
            "the layer holds CPython 3.13 extension modules; this suite runs on"
            f" {platform.python_version()} (make venv PYTHON=python3.13)"
        )
    machine = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
    arch = machine.get(platform.machine().lower())
    if arch is None:
        pytest.skip(f"no manylinux wheels for {platform.machine()}")
    target = tmp_path_factory.mktemp("adbc-layer")
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(LAYER_DIR), "build-AdbcLayer",
         f"ARTIFACTS_DIR={target}", f"PLATFORM={arch}", f"PYTHON={sys.executable}"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return target / "python"


IMPORT_AND_QUERY = """
import json, sys
sys.modules["typing_extensions"] = None  # declared, but not needed at run time
import pyarrow
import adbc_driver_manager, adbc_driver_postgresql
import adbc_driver_postgresql.dbapi as dbapi
with dbapi.connect(sys.argv[1]) as conn, conn.cursor() as cur:
    cur.execute("SELECT g AS id, 'row ' || g AS name, now() AS at FROM generate_series(1, 3) g")
    table = cur.fetch_arrow_table()
    vendor = conn.adbc_get_info()["vendor_name"]
print(json.dumps({
    "files": [m.__file__ for m in (adbc_driver_manager, adbc_driver_postgresql)],
    "pyarrow": pyarrow.__file__,
    "rows": table.select(["id", "name"]).to_pylist(),
    "types": [str(t) for t in table.schema.types],
    "vendor": vendor,
}))
"""


def test_the_same_lock_built_for_this_machine_imports_beside_pyarrow_and_queries_postgres(
    native_layer, fresh_db
):
    """As in Lambda: the layer's python/ first on sys.path, pyarrow from another path entry
    (the pandas layer's), typing_extensions absent; a real query through libpq."""
    machine, _ = elf(native_layer / "adbc_driver_postgresql" / "libadbc_driver_postgresql.so")
    assert machine in (EM_X86_64, EM_AARCH64)
    creds = fresh_db("adbc")
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.pathsep.join([str(native_layer), sysconfig.get_paths()["purelib"]]),
    }
    done = subprocess.run(
        [sys.executable, "-S", "-c", IMPORT_AND_QUERY, creds.to_url()],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert all(f.startswith(str(native_layer)) for f in seen["files"]), seen["files"]
    assert not seen["pyarrow"].startswith(str(native_layer))
    assert seen["rows"] == [{"id": i, "name": f"row {i}"} for i in (1, 2, 3)]
    assert seen["types"] == ["int32", "string", "timestamp[us, tz=UTC]"]
    assert seen["vendor"] == "PostgreSQL"
