"""Forwarding: the outbox's claims and retries, the payload it sends and its signing, the sinks
it sends to, and the guard against internal addresses."""
