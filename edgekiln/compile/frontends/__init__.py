"""edgekiln.compile.frontends."""
