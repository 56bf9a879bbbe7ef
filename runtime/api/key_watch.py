"""Open event sockets follow their API key and tenant: a key revoked closes its sockets with 4401,
a tenant disabled closes its sockets with 4403, within about ``CHECK_EVERY_S``.

One read of the store every ``CHECK_EVERY_S`` covers every open socket of the app (each key
once), so it sees a change whichever process made it: the API, the CLI, or another runtime on
the same database. The check runs only while sockets are open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from runtime.api.appkeys import CONTROL

log = logging.getLogger("voicectl.events")

CHECK_EVERY_S = 0.5
CLOSE_KEY_REVOKED = 4401
CLOSE_TENANT_DISABLED = 4403
_KEYS_PER_READ = 500  # bound on the parameters of one statement

# Called with (close code, reason) when the socket's key or tenant no longer admits it.
Refuse = Callable[[int, str], None]


class KeyWatch:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._watched: dict[object, tuple[str, Refuse]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, socket: object, key_id: str, refuse: Refuse) -> None:
        self._watched[socket] = (key_id, refuse)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def unwatch(self, socket: object) -> None:
        self._watched.pop(socket, None)
        if not self._watched and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while self._watched:
            await asyncio.sleep(CHECK_EVERY_S)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the database may be away for a moment: check again next time
                log.warning("could not re-check the keys of open event sockets", exc_info=True)

    async def check(self) -> None:
        """Refuse every watched socket whose key is revoked (or gone) or whose tenant is not active."""
        watched = list(self._watched.items())
        key_ids = sorted({key_id for key_id, _ in self._watched.values()})
        store = self.app[CONTROL].store
        states = {}
        for at in range(0, len(key_ids), _KEYS_PER_READ):
            for row in await store.api_key_states(key_ids[at:at + _KEYS_PER_READ]):
                states[row["id"]] = row
        for socket, (key_id, refuse) in watched:
            row = states.get(key_id)
            if row is None or row["revoked_at"] is not None:
                verdict = (CLOSE_KEY_REVOKED, "API key revoked")
            elif row["tenant_status"] != "active":
                verdict = (CLOSE_TENANT_DISABLED, "tenant disabled")
            else:
                continue
            if self._watched.pop(socket, None) is not None:  # not closed meanwhile
                refuse(*verdict)


KEY_WATCH: web.AppKey[KeyWatch] = web.AppKey("key_watch")  # the app's watch, made with the app
