"""The long-running service."""
