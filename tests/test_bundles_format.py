"""The pure verification (`edge_agent.bundles.format.verify`) against a hostile corpus:
traversal, symlinks, zip bombs, bad or duplicate-key JSON, wrong types, extra members,
signatures that do not count. Every hostile bundle is SIGNED by a trusted key (the worst
case: a stolen key or a careless maintainer); each must be refused, never raise."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.bundles.canonical import canonical
from edge_agent.bundles.format import Accepted, Installed, Refused, Trust, verify
from edge_agent.bundles.keys import keyid
from edge_agent.bundles.pack import build_wheel, pack, sign

ROOT = Path(__file__).resolve().parents[1]
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
TRUST = Trust({keyid(KEY.public_key()): KEY.public_key(),
               keyid(OTHER.public_key()): OTHER.public_key()})
NOW = datetime.now(UTC)


NOTHING = Installed()


def _verify(data: bytes, trust: Trust = TRUST, installed: Installed = NOTHING
            ) -> Accepted | Refused:
    return verify(data, trust=trust, installed=installed, agent_version="0.1.0", now=NOW,
                  label="x.edgebundle")


def _good() -> bytes:
    return pack(ROOT / "drivers/simulated", name="simulated", version="1.1.0", keys=[KEY],
                expires_days=30, metadata_version=1, requires_agent=">=0")[1]


def _zip(members: list[tuple[str, bytes]], *, attr: int = 0o644 << 16,
         compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            info.external_attr = attr
            info.compress_type = compression
            zf.writestr(info, data)
    return buf.getvalue()


def _signed_bundle(wheel: bytes, wheel_name: str = "w-1.1.0-py3-none-any.whl",
                   **override: object) -> bytes:
    signed: dict[str, object] = {
        "_type": "driver-bundle", "spec_version": "1.0", "name": "simulated",
        "version": "1.1.0", "metadata_version": 1,
        "expires": (NOW + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "requires_agent": ">=0",
        "files": {wheel_name: {"length": len(wheel),
                               "sha256": hashlib.sha256(wheel).hexdigest()}}}
    signed.update(override)
    return _zip([("metadata.json", canonical(sign(signed, [KEY]))), (wheel_name, wheel)])


def _wheel_with(extra: list[tuple[str, bytes]], **kw: int) -> bytes:
    _, wheel = build_wheel(ROOT / "drivers/simulated", "simulated", "1.1.0")
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    return _zip(members + extra, **kw)


def test_a_good_bundle_is_accepted_and_its_files_are_the_driver() -> None:
    verdict = _verify(_good())
    assert isinstance(verdict, Accepted), verdict
    assert "drivers/simulated/__init__.py" in verdict.files
    assert verdict.keyids == (keyid(KEY.public_key()),)


@pytest.mark.parametrize("name", [
    "drivers/simulated/../../evil.py", "/etc/cron.d/evil", "drivers\\simulated\\x.py",
    "drivers/__init__.py", "evil.py", "drivers/modbus/__init__.py",
    "drivers/simulated/./x.py", "C:/x.py"])
def test_entries_outside_the_driver_are_refused(name: str) -> None:
    verdict = _verify(_signed_bundle(_wheel_with([(name, b"print('owned')")])))
    assert isinstance(verdict, Refused) and verdict.reason == "malformed", verdict


def test_a_symlink_entry_is_refused() -> None:
    wheel = _wheel_with([])
    link = _zip([("drivers/simulated/link.py", b"/etc/passwd")], attr=(0o120777 << 16))
    with zipfile.ZipFile(io.BytesIO(wheel)) as a, zipfile.ZipFile(io.BytesIO(link)) as b:
        members = [(i, a.read(i)) for i in a.infolist()] + [(i, b.read(i))
                                                             for i in b.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for info, data in members:
            zf.writestr(info, data)
    verdict = _verify(_signed_bundle(buf.getvalue()))
    assert isinstance(verdict, Refused) and "unsafe" in verdict.detail


def test_a_zip_bomb_is_refused_before_it_is_inflated() -> None:
    bomb = _wheel_with([("drivers/simulated/bomb.py", b"\0" * (20 * 1024 * 1024))])
    assert len(bomb) < 100_000
    verdict = _verify(_signed_bundle(bomb))
    assert isinstance(verdict, Refused) and verdict.reason == "malformed"


def test_a_file_changed_inside_a_resigned_wheel_fails_its_record() -> None:
    _, wheel = build_wheel(ROOT / "drivers/simulated", "simulated", "1.1.0")
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        members = [(i.filename, zf.read(i) + (b"#x" if i.filename.endswith("__init__.py")
                                              else b"")) for i in zf.infolist()]
    verdict = _verify(_signed_bundle(_zip(members)))
    assert isinstance(verdict, Refused) and verdict.reason == "tampered"


@pytest.mark.parametrize("metadata", [
    b"{not json", b'{"signed": {}, "signed": {}}', b'{"signed": NaN}',
    b"[" * 5000 + b"]" * 5000, b'{"signed": {"a": ' * 40 + b"1" + b"}" * 41,
    b" " * (300 * 1024), b'"\xff\xfe"', b"[]", b'{"signed": [], "signatures": []}',
])
def test_bad_metadata_json_is_refused(metadata: bytes) -> None:
    wheel = _wheel_with([])
    verdict = _verify(_zip([("metadata.json", metadata), ("w.whl", wheel)]))
    assert isinstance(verdict, Refused)
    assert verdict.reason in ("malformed", "unsigned"), verdict


@pytest.mark.parametrize("override", [
    {"metadata_version": "1"}, {"metadata_version": 0}, {"metadata_version": True},
    {"version": "not a version"}, {"version": 1}, {"name": "../x"}, {"name": "Sim"},
    {"expires": "tomorrow"}, {"expires": "2030-01-01T00:00:00"},
    {"requires_agent": "~~1"}, {"_type": "root"}, {"files": []}, {"files": {}},
    {"spec_version": "2.0"},
])
def test_wrong_types_in_signed_metadata_are_refused(override: dict[str, object]) -> None:
    verdict = _verify(_signed_bundle(_wheel_with([]), **override))
    assert isinstance(verdict, Refused) and verdict.reason in ("malformed", "incompatible")


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_extra_or_duplicate_members_are_refused() -> None:
    good = _good()
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    for hostile in ([*members, ("evil.sh", b"x")], [*members, members[1]]):
        verdict = _verify(_zip(hostile))
        assert isinstance(verdict, Refused), hostile[-1][0]


def test_signatures_count_once_per_distinct_trusted_key() -> None:
    trust2 = Trust(TRUST.keys, threshold=2)
    wheel = _wheel_with([])
    name = "w-1.1.0-py3-none-any.whl"
    base = json.loads(zipfile.ZipFile(io.BytesIO(_signed_bundle(wheel, name))).read(
        "metadata.json"))
    twice = dict(base, signatures=base["signatures"] * 2)
    v = _verify(_zip([("metadata.json", canonical(twice)), (name, wheel)]), trust2)
    assert isinstance(v, Refused) and v.reason == "below_threshold"
    both = sign(base["signed"], [KEY, OTHER])
    v = _verify(_zip([("metadata.json", canonical(both)), (name, wheel)]), trust2)
    assert isinstance(v, Accepted)
    stranger = sign(base["signed"], [Ed25519PrivateKey.generate()])
    v = _verify(_zip([("metadata.json", canonical(stranger)), (name, wheel)]))
    assert isinstance(v, Refused) and v.reason == "untrusted_key"


def test_downgrades_are_refused_by_version_and_by_metadata_version() -> None:
    good = _good()
    v = _verify(good, installed=Installed("1.2.0", 1))
    assert isinstance(v, Refused) and v.reason == "downgrade"
    v = _verify(good, installed=Installed("1.0.0", 5))
    assert isinstance(v, Refused) and v.reason == "downgrade"
    assert isinstance(_verify(good, installed=Installed("1.0.0", 1)), Accepted)


def test_no_trusted_key_refuses_everything() -> None:
    v = _verify(_good(), Trust({}))
    assert isinstance(v, Refused) and v.reason == "no_trusted_keys"


GOOD = _good()


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=len(GOOD) - 1), st.integers(1, 255))
def test_any_flipped_byte_is_refused_or_changes_nothing_that_runs(pos: int, xor: int) -> None:
    data = bytearray(GOOD)
    data[pos] ^= xor
    verdict = _verify(bytes(data))  # never raises
    if isinstance(verdict, Accepted):  # a byte zip does not read (a timestamp, a comment)
        original = _verify(GOOD)
        assert isinstance(original, Accepted) and verdict.files == original.files


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_are_refused(data: bytes) -> None:
    assert isinstance(_verify(data), Refused)
