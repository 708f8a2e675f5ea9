"""The district fleet view (issue 12, item 4): every gateway's health from the event stream.

`model.py` (pure: events in, the view out), `projector.py` (follows the stream and the
store's gaps), `routes.py` (`GET /v1/fleet` JSON, `GET /fleet` the page) on the stream
API's listener. docs/fleet.md explains the whole.
"""
