"""Device drivers, one package each, registered under the `edge_agent.drivers` entry point.

A driver owns one kind of device: its protocol, polling and decoding, and its README and
sample.yaml. It may import `edge_agent.sdk` (the driver SDK) and `edge_agent.contract`,
nothing else of the agent, and no other driver (checked by `./run lint`).
"""
