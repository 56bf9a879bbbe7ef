"""HTTP API: aiohttp app factory, middlewares, routes and the OpenAPI document."""
