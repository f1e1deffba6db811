"""Reading and importing certificates."""
