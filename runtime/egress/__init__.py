"""The egress guard: where a tenant's URLs may send the runtime (see ``policy``).

``policy`` checks URLs when they are stored and addresses when a connection is made; the client
modules (``aiohttp_client``, ``httpx_client``, ``sockets``) apply it to the connections made for
tenant data. This package imports no other runtime package: config, control, events, tools,
providers and the bridges all use it.
"""
