"""Polling: the providers' status endpoints and report queues, asked where pushing falls short."""
