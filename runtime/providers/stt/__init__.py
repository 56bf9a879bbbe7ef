"""STT adapters: one module per provider (listed in runtime.providers.chains)."""
