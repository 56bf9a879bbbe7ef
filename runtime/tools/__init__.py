"""Tools the agent can call: built-ins, the sample booking pack, and tenant HTTP tools."""
