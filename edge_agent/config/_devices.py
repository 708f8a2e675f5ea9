"""Private to `edge_agent.config`: the `devices` list of a gateway config.

Each entry is validated by the options model of its driver (looked up among the
installed drivers), unknown drivers and options are named with a suggestion, device ids
must be unique, and the gateway config is rebuilt with the drivers' device models.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edge_agent.config.models import DeviceConfig, GatewayConfig
from edge_agent.contract.settings import (
    ConfigError,
    ConfigIssue,
    Document,
    KeyPath,
    error_issue,
    field_names,
    for_device,
    unknown_key,
)
from edge_agent.contract.settings import validate_part as validate

if TYPE_CHECKING:
    from edge_agent.sdk.api import DriverSpec


def validate_devices(doc: Document, store: Path | None = None
                     ) -> tuple[list[DeviceConfig], list[ConfigIssue]]:
    """The devices of `doc.root["devices"]`, each as its driver's options model (the active
    installed bundle of a driver under `store` wins over the built-in one)."""
    if "devices" not in doc.root:
        return [], []
    raw = doc.root["devices"]
    if not isinstance(raw, list):
        what = "has no value" if raw is None else "must be a list"
        return [], [doc.at(("devices",), f"{what}; expected a list of device entries "
                           "(`- id: ...` lines)", "write `devices: []` for none")]
    drivers = _drivers(bool(raw), store)
    issues: list[ConfigIssue] = []
    devices: list[DeviceConfig] = []
    indexes: list[int] = []
    for index, entry in enumerate(raw):
        device, found = _validate_device(doc, drivers, index, entry)
        issues += found
        if device is not None:
            devices.append(device)
            indexes.append(index)
    issues += _duplicate_ids(doc, raw)
    if drivers and not issues:
        issues += _cross_checks(doc, drivers, devices, indexes)
    return devices, issues


def _cross_checks(doc: Document, drivers: Mapping[str, DriverSpec],
                  devices: list[DeviceConfig], indexes: list[int]) -> list[ConfigIssue]:
    """Each driver's checks across its devices (one serial port, one line setting, ...)."""
    issues: list[ConfigIssue] = []
    for name in sorted({d.driver for d in devices} & set(drivers)):
        spec = drivers[name]  # only drivers the config uses are imported
        mine = [(i, d) for i, d in zip(indexes, devices, strict=True) if d.driver == name]
        for position, message in spec.check_devices([d for _, d in mine]):
            index, device = mine[position]
            issues.append(doc.at(("devices", index), for_device(device.id, message)))
    return issues


def assemble(doc: Document, cfg: GatewayConfig, devices: list[DeviceConfig]) -> GatewayConfig:
    """The final config with the drivers' device models; re-runs GatewayConfig's checks."""
    values = {name: getattr(cfg, name) for name in GatewayConfig.model_fields}
    values["devices"] = devices
    try:
        return GatewayConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError([error_issue(doc, GatewayConfig, (), err, None)
                           for err in exc.errors()]) from None


def _drivers(needed: bool, store: Path | None) -> Mapping[str, DriverSpec]:
    if not needed:
        return {}
    from edge_agent.sdk import registry  # late: sdk.registry -> sdk.api -> config.models

    if store is not None and store.is_dir():  # installed bundles win over built-in drivers
        return registry.available(store)
    return registry.available()


def _validate_device(doc: Document, drivers: Mapping[str, DriverSpec], index: int,
                     entry: Any) -> tuple[DeviceConfig | None, list[ConfigIssue]]:
    path: KeyPath = ("devices", index)
    if not isinstance(entry, dict):
        return None, [doc.at(path, "a device entry must be a mapping with `id`, `driver` and "
                             "the driver's options")]
    label = entry.get("id") if isinstance(entry.get("id"), str) else None
    driver = entry.get("driver")
    issues: list[ConfigIssue] = []
    model: type[DeviceConfig] = DeviceConfig
    if isinstance(driver, str) and driver:
        if driver in drivers:
            try:
                model = drivers[driver].options
            except Exception as exc:  # registry.DriverLoadError: a broken install
                return None, [doc.at((*path, "driver"), for_device(label, str(exc)),
                                     "reinstall the agent or the broken driver package")]
        else:
            issues.append(_unknown_driver(doc, path, driver, sorted(drivers), label))
    device, found = validate(doc, model, entry, path, label)
    if model is not DeviceConfig:
        found += _unknown_options(doc, model, entry, path, label)
    return device, issues + found


def _unknown_options(doc: Document, model: type[DeviceConfig], entry: dict[str, Any],
                     path: KeyPath, label: str | None) -> list[ConfigIssue]:
    """DeviceConfig allows extra keys; a driver's options model must not let typos pass."""
    if model.model_config.get("extra") == "forbid":
        return []  # pydantic reports them itself
    names = set(field_names(model))
    issues = []
    for key in entry:
        if key not in names:
            message, hint = unknown_key(model, (key,))
            issues.append(doc.at((*path, key), for_device(label, message), hint, at_key=True))
    return issues


def _unknown_driver(doc: Document, path: KeyPath, driver: str, names: list[str],
                    label: str | None) -> ConfigIssue:
    installed = ", ".join(names) if names else "none"
    close = difflib.get_close_matches(driver, names, n=1, cutoff=0.6)
    message = f"unknown driver `{driver}`; installed drivers: {installed}"
    hint = f"did you mean `{close[0]}`?" if close else None
    return doc.at((*path, "driver"), for_device(label, message), hint)


def _duplicate_ids(doc: Document, raw: list[Any]) -> list[ConfigIssue]:
    first: dict[str, int] = {}
    issues: list[ConfigIssue] = []
    for index, entry in enumerate(raw):
        dev_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(dev_id, str):
            continue
        line = doc.locate(("devices", index, "id"))[0] + 1
        if dev_id in first:
            issues.append(doc.at(("devices", index, "id"), f"device id `{dev_id}` is used twice: "
                                 f"first on line {first[dev_id]}, again on line {line}",
                                 "every device needs its own id"))
        else:
            first[dev_id] = line
    return issues
