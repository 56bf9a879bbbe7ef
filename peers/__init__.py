"""Local servers that speak external providers' wire protocols, driven by tests and benchmarks."""
