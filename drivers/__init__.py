"""Device drivers, one package each, registered under the `edge_agent.drivers` entry point."""
