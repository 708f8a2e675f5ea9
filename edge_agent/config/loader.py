"""Loading a gateway config: the shared strict loader (`edge_agent.contract.settings`)
plus the `devices:` list, each entry validated by its driver's options model."""

from __future__ import annotations

from pathlib import Path

from edge_agent.config._devices import assemble, validate_devices
from edge_agent.config.models import GatewayConfig
from edge_agent.config.profile_dirs import resolve_profile_dirs, using_profile_dirs
from edge_agent.contract.settings import (
    MAX_FILE_BYTES,
    ConfigError,
    ConfigIssue,
    check_model_secrets,
    load_model,
    raise_issues,
    read_yaml,
    validate_part,
)

__all__ = ["MAX_FILE_BYTES", "ConfigError", "ConfigIssue", "check_secrets",
           "load_gateway_config", "load_model"]


def load_gateway_config(path: str | Path, *, devices: bool = True) -> GatewayConfig:
    """Load a gateway config; each device entry is validated by its driver's options (the
    active installed bundle of a driver wins over the built-in one).

    The returned `devices` hold instances of the drivers' option models. `devices=False`
    skips them (the result has none): `edge-agent drivers` installs a bundle a device entry
    may need before it validates.
    """
    doc = read_yaml(path)
    top = {k: v for k, v in doc.root.items() if k != "devices"}
    cfg, issues = validate_part(doc, GatewayConfig, top, ())
    store = cfg.drivers.store_root(cfg.outbox.path) if cfg is not None else None
    dirs = resolve_profile_dirs(cfg.profiles, Path(path)) if cfg is not None else []
    for index, folder in enumerate(dirs):
        if not folder.is_dir():
            issues.append(doc.at(("profiles", index), f"`{folder}` is not a directory",
                                 "list folders holding NAME.yaml profiles; a relative path "
                                 "is relative to this file"))
    with using_profile_dirs([d for d in dirs if d.is_dir()]):
        found, device_issues = validate_devices(doc, store) if devices else ([], [])
    issues += device_issues
    raise_issues(doc, issues)
    assert cfg is not None
    cfg = cfg.model_copy(update={"profiles": [str(d) for d in dirs]})
    return assemble(doc, cfg, found)


def check_secrets(path: str | Path, cfg: GatewayConfig
                  ) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """(errors, warnings) about the secret files, variables and TLS files of a gateway
    config, each at the file:line of its key (see `check_model_secrets`)."""
    return check_model_secrets(path, cfg)
