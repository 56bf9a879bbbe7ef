"""LiveKit: verified webhooks, SIP callers in rooms, tokens, dispatch, transfers and egress."""
