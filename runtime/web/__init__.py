"""HTTP glue shared by the API and the bridges: JSON responses, the metrics registry, rate limits."""
