"""Twilio: signed webhooks, TwiML, Media Streams and the REST calls."""
