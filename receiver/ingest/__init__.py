"""Ingest: the journal (the acknowledgement path) and the projector (the timeline behind it)."""
