"""edgekiln.compile."""
