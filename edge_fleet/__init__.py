"""`edge-fleet`: maintainers push signed driver bundles to gateways over SSH, from a desk.

Modules, one job each: `inventory` (the strict inventory YAML and group selection, pure),
`outcome` (what a gateway answered, parsed defensively, pure), `ssh` (asyncssh
connections with strict known-hosts checking, bounded remote output), `push` (bounded
parallel pushes and the canary rule), `status` (`/api/status` through the SSH connection),
`report` (table, progress, JSON report) and `cli` (click commands). The gateway side is
`edge-agent drivers install` (docs/fleet-ops.md); nothing here imports the agent's
internals, only its shared contract (settings loader, logs).
"""

__version__ = "0.1.0"
