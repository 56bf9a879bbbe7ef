"""Backend-neutral store errors (sqlite3 and asyncpg errors are translated to these)."""


class StoreError(Exception):
    pass


class UniqueViolation(StoreError):
    """A unique constraint failed; ``detail`` names it where the backend says."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


class ForeignKeyViolation(StoreError):
    pass


class DatabaseUnavailable(StoreError):
    pass
