"""Speech-to-text engines. The pipeline sees only the interface in `base`."""
