"""Building a signed bundle from a driver folder (`edge-agent drivers pack`).

The wheel holds `drivers/NAME/**` (no `drivers/__init__.py`: the agent's `drivers` package
owns it) and `edge_driver_NAME-VERSION.dist-info/` (METADATA, WHEEL, entry_points.txt,
RECORD with sha256). Zips are deterministic (sorted names, fixed timestamps), so packing the
same folder twice gives the same wheel.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from edge_agent.bundles.canonical import canonical
from edge_agent.bundles.errors import PackError
from edge_agent.bundles.format import BUNDLE_TYPE, SPEC_VERSION, SUFFIX, safe_name
from edge_agent.bundles.keys import keyid
from edge_agent.bundles.model import NAME_RE

_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache"}


def _entry(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, _EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def _check_name(path: Path, entry: str) -> None:
    """Refuse a file whose wheel entry name `install` would refuse (format.safe_name)."""
    try:
        entry.encode("utf-8")
    except UnicodeEncodeError:
        ok = False
    else:
        ok = safe_name(entry)
    if not ok:
        raise PackError(f"{str(path)!r}: install refuses this file name (':', a backslash, a line "
                        "break, not UTF-8, or over 255 characters in the bundle)",
                        "rename the file (letters, digits, '.', '-', '_')")


def _sources(src: Path, name: str) -> list[tuple[str, bytes]]:
    if not (src / "__init__.py").is_file():
        raise PackError(f"{src}: not a driver package (no __init__.py)",
                        "give the driver's folder, e.g. drivers/simulated")
    found = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(p in _SKIP_DIRS or p.startswith(".") for p in rel.parts):
            continue
        if path.is_symlink():
            raise PackError(f"{path}: symlinks are not packed", "copy the file instead")
        if path.is_file() and path.suffix not in (".pyc", ".pyo"):
            _check_name(path, f"drivers/{name}/{rel.as_posix()}")
            found.append((rel.as_posix(), path.read_bytes()))
    return found


def build_wheel(src: Path, name: str, version: str) -> tuple[str, bytes]:
    """(file name, bytes) of the wheel of driver folder `src` as `drivers.NAME`."""
    dist = f"edge_driver_{name}"
    info_dir = f"{dist}-{version}.dist-info"
    files = [(f"drivers/{name}/{rel}", data) for rel, data in _sources(src, name)]
    files += [
        (f"{info_dir}/METADATA", (f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
                                  f"Summary: edge-agent driver bundle {name}\n").encode()),
        (f"{info_dir}/WHEEL", b"Wheel-Version: 1.0\nGenerator: edge-agent drivers pack\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{info_dir}/entry_points.txt",
         f"[edge_agent.drivers]\n{name} = drivers.{name}:DRIVER\n".encode()),
    ]
    record = []
    for path, data in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info_dir}/RECORD,,")
    files.append((f"{info_dir}/RECORD", ("\n".join(record) + "\n").encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in files:
            _entry(zf, path, data)
    return f"{dist}-{version}-py3-none-any.whl", buf.getvalue()


def sign(signed: dict[str, object], keys: list[Ed25519PrivateKey]) -> dict[str, object]:
    message = canonical(signed)
    sigs = [{"keyid": keyid(k.public_key()),
             "sig": base64.b64encode(k.sign(message)).decode()} for k in keys]
    return {"signed": signed, "signatures": sigs}


def pack(src: Path, *, name: str, version: str, keys: list[Ed25519PrivateKey],
         expires_days: float, metadata_version: int, requires_agent: str,
         now: datetime | None = None) -> tuple[str, bytes]:
    """(file name, bytes) of the signed bundle of driver folder `src`."""
    if not NAME_RE.match(name):
        raise PackError(f"--name {name!r} is not a driver name", "a-z, 0-9 and _")
    try:
        version = str(Version(version))
    except InvalidVersion:
        raise PackError(f"--version {version!r} is not a PEP 440 version",
                        "e.g. 1.2.0") from None
    try:
        SpecifierSet(requires_agent)
    except InvalidSpecifier:
        raise PackError(f"--requires-agent {requires_agent!r} is not a PEP 440 specifier",
                        "e.g. '>=0.1,<1'") from None
    if metadata_version < 1:
        raise PackError("--metadata-version must be 1 or more")
    wheel_name, wheel = build_wheel(src, name, version)
    now = now or datetime.now(UTC)
    expires = (now + timedelta(days=expires_days)).replace(microsecond=0)
    signed: dict[str, object] = {
        "_type": BUNDLE_TYPE, "spec_version": SPEC_VERSION, "name": name, "version": version,
        "metadata_version": metadata_version,
        "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"), "requires_agent": requires_agent,
        "files": {wheel_name: {"length": len(wheel),
                               "sha256": hashlib.sha256(wheel).hexdigest()}}}
    metadata = canonical(sign(signed, keys))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _entry(zf, "metadata.json", metadata)
        _entry(zf, wheel_name, wheel)
    return f"{name}-{version}{SUFFIX}", buf.getvalue()
