"""The files and variables a loaded config names as secrets.

`secret_issues()` walks a validated config for every `SecretRef` (`uplink.password`,
`gateway.credential_salt`, `status_page.credential`, a camera's `password`, ...) and every
`tls:` section, checks what they name without keeping it (`_secret_files.inspect_file`),
and reports each problem at the file:line of its YAML key: errors (the agent could not
start with it) and warnings (it could, but should not: a secret others may read, a
variable not set in this shell, TLS verification switched off).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from edge_agent.contract.settings._issues import ConfigIssue, KeyPath
from edge_agent.contract.settings._secret_files import MAX_TLS_FILE_BYTES, inspect_file
from edge_agent.contract.settings._yaml import Document
from edge_agent.contract.settings.types import SecretRef, TlsConfig

__all__ = ["INSECURE_TLS_HINT", "INSECURE_TLS_MESSAGE", "secret_issues"]

INSECURE_TLS_MESSAGE = ("TLS certificate checks are OFF (insecure_skip_verify): anyone on "
                        "the network path can pose as the broker, read every event and send "
                        "forged acks that delete events never stored")
INSECURE_TLS_HINT = "remove it and give `ca_file`: the CA that signed the broker's certificate"


def _walk(value: Any, path: KeyPath) -> Iterator[tuple[KeyPath, Any]]:
    yield path, value
    if isinstance(value, SecretRef):
        return
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name), (*path, name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, (*path, index))


def secret_issues(doc: Document, cfg: BaseModel) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """(errors, warnings) about the secrets and TLS files `cfg` (loaded from `doc`) names."""
    errors: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    for path, value in _walk(cfg, ()):
        if isinstance(value, SecretRef):
            if value.file is not None:
                check = inspect_file(value.file)
                where = (*path, "file")
                if check.error is not None:
                    errors.append(doc.at(where, f"secret file {check.error.message}",
                                         check.error.hint))
                warnings += [doc.at(where, f"secret file {m}", h) for m, h in check.warnings]
            elif value.env is not None and os.environ.get(value.env) is None:
                warnings.append(doc.at((*path, "env"), f"environment variable {value.env} is "
                                       "not set here", "the agent's service must set it "
                                       "(systemd: Environment= or EnvironmentFile=)"))
        elif isinstance(value, TlsConfig):
            for key, private in (("ca_file", False), ("cert_file", False), ("key_file", True)):
                file = getattr(value, key)
                if file is None:
                    continue
                check = inspect_file(file, cap=MAX_TLS_FILE_BYTES, private=private)
                what = "private key" if private else "certificate file"
                if check.error is not None:
                    errors.append(doc.at((*path, key), f"{what} {check.error.message}",
                                         check.error.hint))
                warnings += [doc.at((*path, key), f"{what} {m}", h) for m, h in check.warnings]
            if value.insecure_skip_verify:
                warnings.append(doc.at((*path, "insecure_skip_verify"), INSECURE_TLS_MESSAGE,
                                       INSECURE_TLS_HINT))
    return errors, warnings
