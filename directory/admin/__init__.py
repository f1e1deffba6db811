"""The admin API: an authenticated listener of its own for RA/operator tools (import, revoke, release, look up)."""
