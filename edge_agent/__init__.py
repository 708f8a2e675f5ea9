"""Edge agent for community gateways."""

__version__ = "0.1.0"
