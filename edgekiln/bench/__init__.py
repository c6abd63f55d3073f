"""edgekiln.bench."""
