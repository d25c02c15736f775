"""diffc."""
