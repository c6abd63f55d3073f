"""edgekiln.emulation."""
