"""Local recording storage: ``<recording dir>/<tenant>/<call>/<kind>.wav``.

The ``recordings`` row keeps the path relative to the recording dir (``uri``), so
the folder can move (e.g. to /var/lib/voicectl) without touching the database.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from runtime.files import make_private_folders

LOCAL = "local"


class UnsafePath(ValueError):
    pass


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def call_dir(self, tenant_id: str, call_id: str) -> Path:
        for part in (tenant_id, call_id):
            if not part or "/" in part or "\\" in part or part in (".", "..") or "\x00" in part:
                raise UnsafePath(f"unsafe path component {part!r}")
        return self.root / tenant_id / call_id

    def path_for(self, tenant_id: str, call_id: str, name: str) -> Path:
        return make_private_folders(self.call_dir(tenant_id, call_id)) / name

    def uri(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def resolve(self, uri: str) -> Path:
        """The file of a stored uri; never outside the recording dir."""
        root = self.root.resolve()
        path = (root / uri).resolve()
        if not path.is_relative_to(root) or path == root:
            raise UnsafePath(f"recording uri {uri!r} points outside the recording dir")
        return path

    def remove(self, uri: str) -> None:
        """Delete one file (once it is safely elsewhere) and its call's folder once empty. The tenant
        folder stays: another call's recorder may be creating its own folder in it right now."""
        path = self.resolve(uri)
        path.unlink(missing_ok=True)
        if len(path.relative_to(self.root.resolve()).parts) >= 3:  # <tenant>/<call>/<file>
            try:
                path.parent.rmdir()
            except OSError:
                pass  # other files of the call are still here

    def delete_call(self, tenant_id: str, call_id: str) -> int:
        """Remove a call's folder; the number of files removed."""
        folder = self.call_dir(tenant_id, call_id)
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # the tenant folder, once empty
        except OSError:
            pass
        return count
