"""`edge-collector provision`: a gateway's MQTT credential, its broker rights, its place.

The collector config's `provisioning:` section names a directory holding the Mosquitto
`passwd` and `acl` the district broker reads (`password_file`, `acl_file`), and the
registry is the config's `gateways.file`. A gateway is *provisioned* when the registry
places it and the provisioning `passwd` holds its hash; its ACL block then names its own
district and community codes, never a wildcard, so its credential publishes nowhere else.

Invariants:
- the plaintext password is written once, to a 0600 file for the box; only its `$7$`
  hash reaches the provisioning directory, never a log or a command line;
- every file is replaced atomically (temporary file, fsync, rename) and the whole
  read-modify-write runs under an exclusive lock on `DIR/.lock`: two provisions at once
  both land;
- the registry file keeps its comments and other entries; the new text is checked with
  the registry's own strict loader before it replaces the old one;
- lines of `passwd` for users provisioning does not manage (a collector account added
  with `mosquitto_passwd`) are kept as they are.

`plan` is pure (text in, text out); `files` does the I/O; `cli` is the command.
"""

from collector.provisioning.plan import (
    BadRequest,
    Conflict,
    ProvisionError,
)

__all__ = ["BadRequest", "Conflict", "ProvisionError"]
