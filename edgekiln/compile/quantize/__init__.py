"""edgekiln.compile.quantize."""
