"""MLflow: the store (location, checks, verified artifact writes, the run a stage logs to), the genlab model
flavour, and the team server."""
