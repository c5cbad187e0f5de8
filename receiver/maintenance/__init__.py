"""Maintenance: retention, stored receipts read again (reprocess), erasure of a phone number."""
