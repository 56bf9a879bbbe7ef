"""The stream_tokens table (cluster mode): media stream tokens every instance can check and spend.

Rows hold a keyed digest of the token, never the token. Times are the store's ISO-8601 text.
"""

from __future__ import annotations

from runtime.store.base import Executor


class StreamTokenRows:
    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    async def insert(self, token_hash: str, call_id: str, issued_by: str, expires_at: str, now: str) -> None:
        await self.executor.execute(
            "INSERT INTO stream_tokens (token_hash, call_id, issued_by, expires_at, created_at) VALUES (?, ?, ?, ?, ?)",
            (token_hash, call_id, issued_by, expires_at, now))

    async def spend(self, token_hash: str, now: str, used_by: str) -> str | None:
        """The call id of an unspent, unexpired token, spent by this one statement (so two
        instances presented the same token cannot both get it); None otherwise."""
        return await self.executor.fetchval(
            "UPDATE stream_tokens SET used_at = ?, used_by = ? "
            "WHERE token_hash = ? AND used_at IS NULL AND expires_at > ? RETURNING call_id",
            (now, used_by, token_hash, now))

    async def find(self, token_hash: str) -> dict | None:
        return await self.executor.fetchone(
            "SELECT call_id, expires_at, used_at FROM stream_tokens WHERE token_hash = ?", (token_hash,))

    async def revoke_call(self, call_id: str, now: str) -> None:
        """The call's unspent tokens can no longer be spent (the call has ended)."""
        await self.executor.execute(
            "UPDATE stream_tokens SET used_at = ? WHERE call_id = ? AND used_at IS NULL", (now, call_id))

    async def spent_by_another(self, call_id: str, instance_id: str) -> bool:
        """Whether another instance's media socket has spent one of the call's tokens (taken it over)."""
        return await self.executor.fetchval(
            "SELECT COUNT(*) AS n FROM stream_tokens WHERE call_id = ? AND used_by IS NOT NULL AND used_by <> ?",
            (call_id, instance_id)) > 0

    async def disown(self, call_id: str, instance_id: str) -> None:
        await self.executor.execute(
            "UPDATE stream_tokens SET used_by = NULL WHERE call_id = ? AND used_by = ?", (call_id, instance_id))

    async def purge(self, before: str) -> int:
        return await self.executor.execute("DELETE FROM stream_tokens WHERE expires_at < ?", (before,))
