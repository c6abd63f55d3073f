"""Over-the-air deployments on the device: download, verify, stage, switch, health check,
commit or roll back (see :mod:`edgekiln.agents.deploy.manager`)."""
