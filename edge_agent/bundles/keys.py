"""Ed25519 keys: generate, read, key ids (sha256 hex of the raw 32-byte public key).

A private key file is PKCS#8 PEM, created 0600. A public key is given as base64 of its raw
32 bytes (what `edge-agent drivers keygen` prints and writes to `OUT.pub`) or as PEM.
Public keys are not secrets; private keys are never logged.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.bundles.errors import KeyError_
from edge_agent.config.models import DriversConfig
from edge_agent.contract.settings import ConfigIssue, read_yaml

MAX_KEY_FILE = 16 * 1024


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()


def public_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(key)).decode("ascii")


def parse_public(text: str, where: str) -> Ed25519PublicKey:
    """A public key from base64 of its raw 32 bytes or from PEM."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except ValueError as exc:
            raise KeyError_(f"{where}: not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyError_(f"{where}: not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_(f"{where}: not base64", "paste the `public_key` keygen printed, "
                        "or name the `.pub` file keygen wrote") from None
    if len(raw) != 32:
        raise KeyError_(f"{where}: an Ed25519 public key is 32 bytes, this is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def read_public(path: Path) -> Ed25519PublicKey:
    try:
        if path.stat().st_size > MAX_KEY_FILE:
            raise KeyError_(f"{path}: too large for a public key file")
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyError_(f"{path}: cannot read the trusted key ({exc})",
                        "check drivers.trusted_keys in the gateway config") from None
    return parse_public(text, str(path))


def read_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()[:MAX_KEY_FILE]
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyError_(f"{path}: cannot read the signing key ({type(exc).__name__})",
                        "give a key written by `edge-agent drivers keygen`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"{path}: not an Ed25519 private key")
    return key


def generate(out: Path) -> Ed25519PrivateKey:
    """Write a new private key to `out` (0600, never over an existing file; a missing
    folder is made, 0700) and its public key (base64 raw) to `out.pub`."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        if not out.parent.is_dir():  # a folder of signing keys: private to its owner
            out.parent.mkdir(mode=0o700, parents=True)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(f"{out}: exists already; a key is never overwritten",
                        "choose another file name") from None
    except OSError as exc:
        raise KeyError_(f"{out}: cannot create ({exc.strerror})",
                        "write it where this user may create files") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    pub = out.with_name(out.name + ".pub")
    pub.write_text(public_b64(key.public_key()) + "\n", "ascii")
    return key


def trusted_key_issues(path: str | Path, cfg: DriversConfig) -> list[ConfigIssue]:
    """Problems with the trusted public key files of a gateway config (`drivers.trusted_keys`),
    each at the file:line of its key: `edge-agent validate` warns of a key file that is
    missing or holds no Ed25519 public key before any install is refused for it."""
    files = [(i, k.file) for i, k in enumerate(cfg.trusted_keys) if k.file is not None]
    if not files:
        return []
    doc = read_yaml(path)
    issues = []
    ids = set()
    for k in cfg.trusted_keys:
        with contextlib.suppress(KeyError_):
            ids.add(keyid(parse_public(k.key, "key")) if k.key is not None else "")
    ids.discard("")
    for index, file in files:
        try:
            ids.add(keyid(read_public(file)))
        except KeyError_ as exc:
            issues.append(doc.at(("drivers", "trusted_keys", index, "file"), str(exc),
                                 exc.hint or "name the `.pub` file `edge-agent drivers "
                                 "keygen` wrote"))
    if not issues and cfg.threshold > len(ids):
        issues.append(doc.at(("drivers", "threshold"), f"threshold {cfg.threshold} is more "
                             f"than the {len(ids)} distinct trusted key(s) (key ids): every "
                             "bundle would be refused below_threshold",
                             "list each maintainer's key once, or lower drivers.threshold"))
    return issues
