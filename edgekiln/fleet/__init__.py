"""edgekiln.fleet."""
