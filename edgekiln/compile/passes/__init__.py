"""edgekiln.compile.passes."""
