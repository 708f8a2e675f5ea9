"""District collector: ingest, store, stream."""
