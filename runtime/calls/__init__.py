"""Calls: routing, the CallSession state machine, the tracker of live calls."""
