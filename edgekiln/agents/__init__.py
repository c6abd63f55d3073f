"""edgekiln.agents."""
