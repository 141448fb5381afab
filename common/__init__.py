"""Code shared by the API, the agent and the database layer: settings and structured logging."""
