"""Events: topics, models, bus, outbox delivery and WebSocket subscriptions."""
