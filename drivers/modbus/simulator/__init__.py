"""The Modbus device simulator behind `edge-agent simulate`: any profile served from
pymodbus servers over TCP or RTU (`server`), its YAML (`config`), scripted scenarios
(`scenario`) and the values a healthy device reads at rest (`values`).

Imports the Modbus driver's pure parts (profiles, encoding), `edge_agent.sdk` and
`edge_agent.contract`.
"""
