"""Control plane: services shared by the CLI and the HTTP API."""
