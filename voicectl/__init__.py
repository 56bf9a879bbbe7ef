"""voicectl: the command line of the self-hosted voice AI runtime.

Nothing heavy is imported at module level anywhere in this package, so that
``voicectl --help`` and shell completion start fast; runtime.*, pydantic, rich
and aiohttp are imported inside the command functions.
"""
