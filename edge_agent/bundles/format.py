"""The bundle format and its verification: a PURE function, bytes in, verdict out.

`NAME-VERSION.edgebundle` is a zip of exactly two members: `metadata.json` and one wheel.
`metadata.json` = {"signed": {...}, "signatures": [{"keyid", "sig"}]}, modelled on TUF's
targets role: `_type: driver-bundle`, `spec_version`, `name`, `version` (PEP 440),
`metadata_version` (int, monotonic per driver), `expires` (RFC 3339), `requires_agent`
(PEP 440 specifier), `files` {wheel name: {length, sha256}}. Each signature is Ed25519 over
the canonical JSON of `signed`; `keyid` is the sha256 hex of the raw public key; at least
`threshold` DISTINCT trusted keys must sign (a key that signs twice counts once).

Everything read is bounded (sizes, entry counts, compression ratio, JSON size and depth),
zip names are checked (no absolute path, `..`, backslash, symlink, nothing outside
`drivers/NAME/` and the wheel's dist-info), the wheel's RECORD hashes are checked. Any
problem is a `Refused` with a short reason code, a detail naming the bundle and a hint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import stat
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from edge_agent.bundles.canonical import JsonRefused, canonical, strict_loads
from edge_agent.bundles.model import NAME_RE, VERSION_DIR_RE, Installed, same_version

BUNDLE_TYPE = "driver-bundle"
SPEC_VERSION = "1.0"
SUFFIX = ".edgebundle"
KEYID_RE = re.compile(r"^[0-9a-f]{64}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Limits:
    bundle_bytes: int = 32 * 1024 * 1024
    metadata_bytes: int = 256 * 1024
    wheel_entries: int = 2000
    unpacked_bytes: int = 64 * 1024 * 1024
    entry_bytes: int = 16 * 1024 * 1024
    ratio: int = 200  # uncompressed/compressed per entry (zip bombs)
    signatures: int = 32


LIMITS = Limits()


@dataclass(frozen=True)
class Trust:
    """The trusted public keys by key id and how many distinct ones must sign."""

    keys: dict[str, Ed25519PublicKey]
    threshold: int = 1


@dataclass(frozen=True)
class Signed:
    name: str
    version: str
    metadata_version: int
    expires: datetime
    requires_agent: str
    wheel: str
    wheel_sha256: str


@dataclass(frozen=True)
class Accepted:
    signed: Signed
    keyids: tuple[str, ...]
    #: the wheel's files (path inside the wheel -> bytes), checked against RECORD
    files: dict[str, bytes] = field(repr=False)


@dataclass(frozen=True)
class Refused:
    reason: str  # unsigned|tampered|untrusted_key|below_threshold|expired|downgrade|...
    detail: str
    hint: str
    name: str = ""
    version: str = ""
    keyids: tuple[str, ...] = ()

    def text(self) -> str:
        return f"{self.reason}: {self.detail}"


class _Refuse(Exception):
    def __init__(self, reason: str, detail: str, hint: str = "") -> None:
        super().__init__(detail)
        self.reason, self.detail, self.hint = reason, detail, hint


_HINTS = {
    "unsigned": "sign it: `edge-agent drivers pack ... --key KEYFILE`",
    "tampered": "the file changed after it was signed: fetch or pack it again",
    "untrusted_key": "sign with a key listed in drivers.trusted_keys of the gateway config, "
                     "or add its public key there",
    "below_threshold": "more distinct trusted keys must sign (drivers.threshold)",
    "expired": "pack and sign it again with a later --expires",
    "downgrade": "a bundle never replaces a newer version; `edge-agent drivers rollback "
                 "NAME` is the only way back",
    "incompatible": "pack it with a --requires-agent that includes this agent's version, "
                    "or upgrade the agent",
    "malformed": "build bundles with `edge-agent drivers pack`",
    "no_trusted_keys": "list the maintainers' public keys in drivers.trusted_keys",
}


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise _Refuse("malformed", f"{info.filename}: {info.file_size} bytes, over the "
                      f"{limit} byte limit")
    if info.compress_size and info.file_size / info.compress_size > LIMITS.ratio:
        raise _Refuse("malformed", f"{info.filename}: compression ratio over "
                      f"{LIMITS.ratio} (a zip bomb?)")
    try:
        with zf.open(info) as fh:
            data = fh.read(limit + 1)
    except Exception as exc:  # BadZipFile, OSError, zlib.error... from a hostile stream
        raise _Refuse("malformed", f"{info.filename}: cannot be read ({exc})") from None
    if len(data) > limit:
        raise _Refuse("malformed", f"{info.filename}: more than its declared size")
    return data


def _open_zip(data: bytes, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _Refuse("malformed", f"{what} is not a zip file ({exc})") from None


def safe_name(name: str) -> bool:
    """A zip entry name install accepts (`drivers pack` packs only these): relative, no
    `..`, `.`, `:`, backslash, NUL or line break (RECORD is one line per file)."""
    if not name or len(name) > 255 or "\\" in name or "\x00" in name or name.startswith("/"):
        return False
    if "".join(name.splitlines()) != name:
        return False
    parts = name.rstrip("/").split("/")
    return all(p not in ("", ".", "..") and ":" not in p for p in parts)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _str(obj: dict[str, Any], key: str, max_len: int = 200) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise _Refuse("malformed", f"signed.{key} must be a non-empty string")
    return value


def _signatures(doc: dict[str, Any], trust: Trust) -> tuple[str, ...]:
    """The distinct trusted key ids whose signature over `signed` verifies."""
    sigs = doc.get("signatures")
    if sigs is None or sigs == []:
        raise _Refuse("unsigned", "metadata.json has no signature")
    if not isinstance(sigs, list) or len(sigs) > LIMITS.signatures:
        raise _Refuse("malformed", "signatures must be a list of {keyid, sig} "
                      f"(at most {LIMITS.signatures})")
    try:
        message = canonical(doc["signed"])
    except (ValueError, UnicodeError) as exc:  # strict_loads refuses these already
        raise _Refuse("malformed", f"signed has no canonical form ({exc})") from None
    good: set[str] = set()
    known_bad: list[str] = []
    for sig in sigs:
        if not isinstance(sig, dict) or set(sig) != {"keyid", "sig"}:
            raise _Refuse("malformed", "a signature must be {keyid, sig}")
        kid, value = sig["keyid"], sig["sig"]
        if not isinstance(kid, str) or not KEYID_RE.match(kid) or not isinstance(value, str):
            raise _Refuse("malformed", "a signature's keyid must be 64 hex digits and its sig "
                          "base64")
        key = trust.keys.get(kid)
        if key is None:
            continue
        try:
            raw = base64.b64decode(value, validate=True)
            key.verify(raw, message)
        except (binascii.Error, ValueError, InvalidSignature):
            known_bad.append(kid[:12])
            continue
        good.add(kid)
    if known_bad and not good:
        raise _Refuse("tampered", "the signature of trusted key "
                      f"{', '.join(known_bad)} does not match metadata.json")
    if not good:
        ids = ", ".join(sorted({str(s.get("keyid", ""))[:12] for s in sigs}))
        raise _Refuse("untrusted_key", f"signed by key {ids}, which this gateway does not "
                      "trust")
    if len(good) < trust.threshold:
        raise _Refuse("below_threshold", f"{len(good)} distinct trusted key(s) signed, "
                      f"{trust.threshold} required")
    return tuple(sorted(good))


def _signed(doc: dict[str, Any], now: datetime) -> Signed:
    s = doc["signed"]
    if s.get("_type") != BUNDLE_TYPE:
        raise _Refuse("malformed", f"signed._type must be {BUNDLE_TYPE!r}")
    spec = _str(s, "spec_version", 20)
    if spec.split(".")[0] != SPEC_VERSION.split(".")[0]:
        raise _Refuse("incompatible", f"spec_version {spec} is not supported (this agent "
                      f"reads {SPEC_VERSION})")
    name = _str(s, "name", 40)
    if not NAME_RE.match(name):
        raise _Refuse("malformed", f"signed.name {name!r} is not a driver name "
                      "(a-z, 0-9, _)")
    raw_version = _str(s, "version", 64)
    try:
        version = str(Version(raw_version))
    except InvalidVersion:
        raise _Refuse("malformed", f"signed.version {raw_version!r} is not PEP 440") from None
    if not VERSION_DIR_RE.match(version):
        raise _Refuse("malformed", f"signed.version {version!r} has unusable characters")
    mv = s.get("metadata_version")
    if type(mv) is not int or not 1 <= mv < 2**53:
        raise _Refuse("malformed", "signed.metadata_version must be a positive integer")
    expires_text = _str(s, "expires", 40)
    try:
        expires = datetime.fromisoformat(expires_text.replace("Z", "+00:00"))
    except ValueError:
        raise _Refuse("malformed", f"signed.expires {expires_text!r} is not RFC 3339") from None
    if expires.tzinfo is None:
        raise _Refuse("malformed", "signed.expires must carry a time zone (…Z)")
    requires = _str(s, "requires_agent", 200)
    try:
        SpecifierSet(requires)
    except InvalidSpecifier:
        raise _Refuse("malformed", f"signed.requires_agent {requires!r} is not a PEP 440 "
                      "specifier") from None
    files = s.get("files")
    if not isinstance(files, dict) or len(files) != 1:
        raise _Refuse("malformed", "signed.files must name exactly one wheel")
    (wheel, info), = files.items()
    if (not isinstance(info, dict) or set(info) != {"length", "sha256"}
            or type(info["length"]) is not int or not isinstance(info["sha256"], str)
            or not SHA256_RE.match(info["sha256"])):
        raise _Refuse("malformed", "signed.files entries must be {length, sha256}")
    if not wheel.endswith(".whl") or "/" in wheel or not safe_name(wheel):
        raise _Refuse("malformed", f"signed.files names {wheel!r}, not a wheel")
    if expires <= now:
        raise _Refuse("expired", f"expired on {expires_text}")
    return Signed(name, version, mv, expires, requires, wheel, info["sha256"])


def _wheel_files(signed: Signed, wheel: bytes) -> dict[str, bytes]:
    zf = _open_zip(wheel, signed.wheel)
    infos = zf.infolist()
    if len(infos) > LIMITS.wheel_entries:
        raise _Refuse("malformed", f"the wheel has {len(infos)} entries, over "
                      f"{LIMITS.wheel_entries}")
    package = f"drivers/{signed.name}/"
    files: dict[str, bytes] = {}
    total = 0
    dist_info = ""
    for info in infos:
        name = info.filename
        if not safe_name(name) or _is_symlink(info):
            raise _Refuse("malformed", f"the wheel holds an unsafe entry {name[:80]!r}")
        if info.is_dir():
            continue
        top = name.split("/", 1)[0]
        if top.endswith(".dist-info") and name.count("/") == 1:
            if dist_info and top != dist_info:
                raise _Refuse("malformed", "the wheel has two .dist-info folders")
            dist_info = top
        elif not name.startswith(package):
            raise _Refuse("malformed", f"the wheel holds {name[:80]!r}, outside {package}")
        if name in files:
            raise _Refuse("malformed", f"the wheel holds {name!r} twice")
        total += info.file_size
        if total > LIMITS.unpacked_bytes:
            raise _Refuse("malformed", f"the wheel unpacks to over {LIMITS.unpacked_bytes} "
                          "bytes")
        files[name] = _read_member(zf, info, LIMITS.entry_bytes)
    if f"{package}__init__.py" not in files:
        raise _Refuse("malformed", f"the wheel has no {package}__init__.py")
    _no_file_dir_clash(files)
    _check_record(files, dist_info)
    _check_dist_info(signed, files, dist_info)
    return files


def _no_file_dir_clash(files: dict[str, bytes]) -> None:
    """No file is also a folder of another file (`drivers/x/a` and `drivers/x/a/b.py`):
    such a wheel cannot be unpacked."""
    for name in files:
        parts = name.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in files:
                raise _Refuse("malformed", f"the wheel holds {folder[:80]!r} both as a file "
                              f"and as the folder of {name[:80]!r}")


def _check_record(files: dict[str, bytes], dist_info: str) -> None:
    record_name = f"{dist_info}/RECORD"
    record = files.get(record_name)
    if record is None:
        raise _Refuse("malformed", "the wheel has no dist-info RECORD")
    listed: dict[str, str] = {}
    for line in record.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        parts = line.rsplit(",", 2)
        if len(parts) != 3:
            raise _Refuse("malformed", "the wheel's RECORD has a bad line")
        listed[parts[0]] = parts[1]
    for name, content in files.items():
        if name == record_name:
            continue
        want = listed.get(name)
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=")
        if want != f"sha256={digest.decode()}":
            raise _Refuse("tampered", f"{name} does not match the wheel's RECORD")
    extra = set(listed) - set(files)
    if extra:
        raise _Refuse("malformed", f"RECORD lists {sorted(extra)[0]!r}, absent from the wheel")


def _check_dist_info(signed: Signed, files: dict[str, bytes], dist_info: str) -> None:
    points = files.get(f"{dist_info}/entry_points.txt", b"").decode("utf-8", "replace")
    wanted = f"{signed.name} = drivers.{signed.name}:DRIVER"
    lines = [line.strip() for line in points.splitlines()]
    if "[edge_agent.drivers]" not in lines or wanted not in lines:
        raise _Refuse("malformed", f"the wheel's entry_points.txt lacks "
                      f"[edge_agent.drivers] {wanted}")
    meta = files.get(f"{dist_info}/METADATA", b"").decode("utf-8", "replace")
    version = next((line.split(":", 1)[1].strip() for line in meta.splitlines()
                    if line.startswith("Version:")), "")
    if not same_version(version, signed.version):
        raise _Refuse("tampered", f"the wheel's METADATA version {version!r} is not the "
                      f"signed {signed.version}")


def _older(version: str, than: str) -> bool:
    try:
        return Version(version) < Version(than)
    except InvalidVersion:  # a built-in's odd version string: nothing to compare
        return False


def verify(data: bytes, *, trust: Trust, installed: Installed, agent_version: str,
           now: datetime, label: str = "bundle") -> Accepted | Refused:
    """The verdict on bundle `data`. `label` names the bundle in messages (its file name)."""
    name = version = ""
    keyids: tuple[str, ...] = ()
    try:
        if not trust.keys:
            raise _Refuse("no_trusted_keys", "this gateway trusts no key")
        if len(data) > LIMITS.bundle_bytes:
            raise _Refuse("malformed", f"{len(data)} bytes, over {LIMITS.bundle_bytes}")
        zf = _open_zip(data, label)
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(infos) > 4 or len(set(names)) != len(names):
            raise _Refuse("malformed", "a bundle holds metadata.json and one wheel, nothing "
                          "else")
        by_name = {i.filename: i for i in infos}
        if "metadata.json" not in by_name:
            raise _Refuse("unsigned", "no metadata.json")
        raw = _read_member(zf, by_name["metadata.json"], LIMITS.metadata_bytes)
        try:
            doc = strict_loads(raw, LIMITS.metadata_bytes)
        except JsonRefused as exc:
            raise _Refuse("malformed", f"metadata.json: {exc}") from None
        if (not isinstance(doc, dict) or not set(doc) <= {"signed", "signatures"}
                or not isinstance(doc.get("signed"), dict)):
            raise _Refuse("malformed", "metadata.json must be {signed, signatures}")
        s = doc["signed"]
        name = s.get("name") if isinstance(s.get("name"), str) else ""
        version = s.get("version") if isinstance(s.get("version"), str) else ""
        name, version = name[:40], version[:64]
        keyids = _signatures(doc, trust)
        signed = _signed(doc, now)
        others = [n for n in names if n != "metadata.json"]
        if others != [signed.wheel]:
            raise _Refuse("tampered", f"the bundle holds {others}, the metadata signs "
                          f"{signed.wheel!r}")
        wheel = _read_member(zf, by_name[signed.wheel], LIMITS.bundle_bytes)
        info = s["files"][signed.wheel]
        if len(wheel) != info["length"] or hashlib.sha256(wheel).hexdigest() != info["sha256"]:
            raise _Refuse("tampered", f"{signed.wheel} does not match its signed length and "
                          "sha256")
        files = _wheel_files(signed, wheel)
        if not SpecifierSet(signed.requires_agent).contains(Version(agent_version),
                                                            prereleases=True):
            raise _Refuse("incompatible", f"needs agent {signed.requires_agent}, this agent "
                          f"is {agent_version}")
        if installed.version is not None and Version(signed.version) < Version(
                installed.version):
            raise _Refuse("downgrade", f"version {signed.version} is older than the installed "
                          f"{installed.version}")
        if installed.version is None and installed.builtin is not None and _older(
                signed.version, installed.builtin):
            raise _Refuse("downgrade", f"version {signed.version} is older than the built-in "
                          f"driver's {installed.builtin}")
        if signed.metadata_version < installed.metadata_version:
            raise _Refuse("downgrade", f"metadata_version {signed.metadata_version} is older "
                          f"than the installed {installed.metadata_version}")
        return Accepted(signed, keyids, files)
    except _Refuse as r:
        return Refused(r.reason, f"{label}: {r.detail}", r.hint or _HINTS.get(r.reason, ""),
                       name, version, keyids)
