"""Telephony bridges: provider wire formats <-> call sessions and audio frames."""
