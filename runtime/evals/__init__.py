"""Evaluations: scenario suites, synthetic calls pinned to an agent version, and their scores."""
