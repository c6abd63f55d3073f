"""edgekiln.compile.backends."""
