"""The issuance stub (demo and tests only)."""
