"""The driver SDK: exactly what a driver may import from the agent.

`api` (the `DriverSpec` a driver registers, the `EventSink` it reports to, device
states, restored alarms), `registry` (driver discovery through entry points), `rules`
(the rules engine and chatter control), `config` (the base of a device's options model
and the loader), `supervise` (keeping a task alive with back-off), `commands` (the
entry-point group a driver's `edge-agent` commands register in, and their exit
conventions) and `testing` (a recording sink and helpers for driver tests). Files a
driver ships (profiles, scenarios) are its own package data, read with
`importlib.resources`. Drivers may import this package and `edge_agent.contract`,
nothing else of the agent (enforced by import-linter, see pyproject.toml).
"""
