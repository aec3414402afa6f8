"""Encryption at rest: sealed objects and journals, per-recording data keys wrapped with RSA."""
