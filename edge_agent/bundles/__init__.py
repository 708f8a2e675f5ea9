"""Signed driver bundles: pack, verify, install side by side, switch, roll back.

A bundle (`NAME-VERSION.edgebundle`) is a zip of `metadata.json` (TUF-like targets metadata,
Ed25519 signatures over its canonical JSON) and one wheel of `drivers/NAME`. Modules:
`format` (the pure verification: bytes in, verdict out), `keys` (Ed25519 keys, key ids),
`wheel` and `pack` (building a signed bundle), `store` (versions side by side under the
state directory, the atomic `current` symlink, state.json), `journal` (what was installed,
rolled back or refused, for the agent's events), `loader` (importing a bundle's driver),
`runtime` (the agent's side: live reload and probation).

Invariant: whatever is killed when, `<state>/drivers/NAME/current` is absent (the built-in
driver) or points at a complete, verified version directory.
"""

from edge_agent.bundles.errors import BundleError, StoreError

__all__ = ["BundleError", "StoreError"]
