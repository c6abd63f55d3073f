"""edgekiln.cli."""
