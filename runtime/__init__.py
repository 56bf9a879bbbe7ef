"""voicectl runtime: config, store, control plane, API and the call engine."""
