"""edgekiln.compile.backends.tvm."""
