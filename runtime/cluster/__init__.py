"""Several runtimes on one PostgreSQL with NATS JetStream (cluster mode, turned on by events.nats.url)."""
