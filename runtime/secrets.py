"""Secrets in the OS keyring, an encrypted keyring file on headless boxes, or sealed in the database.

Rows only ever hold a reference (``ref``); the value lives in a vault. On a
box without a Secret Service, keyring would fall back to a failing backend, so
``auto`` uses keyrings.cryptfile (AES-GCM) keyed by the master key from
$VOICECTL_MASTER_KEY or the 0600 master-key file that ``voicectl init`` writes.
Several runtimes on one database use ``database`` (runtime.control.secret_values):
values sealed with a key derived from the same master key.
Nothing here ever prompts: CI and systemd have no stdin.
"""

from __future__ import annotations

import fcntl
import functools
import os
import secrets as _random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from runtime.files import make_private_folders, private_opener

if TYPE_CHECKING:
    from runtime.config import Settings

SERVICE = "voicectl"
MASTER_KEY_ENV = "VOICECTL_MASTER_KEY"


class SecretsError(Exception):
    """The secret store cannot be used; the message says what to do."""


class SecretBackend(Protocol):
    def get_password(self, service: str, username: str) -> str | None: ...
    def set_password(self, service: str, username: str, password: str) -> None: ...
    def delete_password(self, service: str, username: str) -> None: ...


def generate_master_key() -> str:
    return _random.token_urlsafe(32)


def derive_key(master_key: str, purpose: str) -> bytes:
    """A 256-bit key for one purpose (sealing secrets, signing tokens), derived from the master key
    with HKDF-SHA256: every runtime holding the master key derives the same one, and a key of one
    purpose says nothing about another's."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"voicectl {purpose} v1".encode()).derive(master_key.encode())


def write_master_key(path: Path) -> str:
    """Create the master-key file (0600) unless it exists; return the key."""
    make_private_folders(path.parent)
    if path.exists():
        return path.read_text().strip()
    key = generate_master_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def read_master_key(path: Path) -> str:
    env = os.environ.get(MASTER_KEY_ENV)
    if env:
        return env.strip()
    if not path.exists():
        raise SecretsError(
            f"no master key: set {MASTER_KEY_ENV} or create {path} with `voicectl init`"
        )
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretsError(f"master key file {path} is readable by others (mode {mode:o}); chmod 600 it")
    key = path.read_text().strip()
    if len(key) < 16:
        raise SecretsError(f"master key in {path} is too short")
    return key


@functools.cache
def _cryptfile_class() -> type:
    """Defined once: keyring registers every backend subclass it sees."""
    from keyrings.cryptfile.cryptfile import CryptFileKeyring

    class VoicectlCryptFile(CryptFileKeyring):
        # The master key is 256 random bits, not a password: Argon2 stretching adds no
        # strength, so keep it cheap enough for per-call lookups.
        time_cost = 2
        memory_cost = 2**13
        parallelism = 1

    return VoicectlCryptFile


def _cryptfile_backend(path: Path, master_key: str) -> SecretBackend:
    backend = _cryptfile_class()()
    backend.file_path = str(path)
    try:
        backend.keyring_key = master_key  # unlocks (checks the key against) an existing file at once
    except ValueError as exc:  # AES-GCM tag mismatch or "Incorrect Password"
        raise SecretsError(
            f"cannot decrypt the keyring file {path}: wrong master key? "
            f"(check {MASTER_KEY_ENV} and the master-key file)"
        ) from exc
    return backend


def _is_os_keyring(backend: object) -> bool:
    from keyring.backends import chainer, fail

    name = (type(backend).__module__ + "." + type(backend).__name__).lower()
    if isinstance(backend, (fail.Keyring, chainer.ChainerBackend)) or "plaintext" in name or "null" in name:
        return False
    # File keyrings (keyrings.cryptfile, keyrings.alt, and our own cryptfile subclass, which
    # keyring registers as a backend too) are no OS keyring: through keyring they prompt for
    # a password, and their chain ends in a plaintext file.
    return not any(cls.__module__.startswith(("keyrings.cryptfile", "keyrings.alt")) for cls in type(backend).__mro__)


def _system_backend() -> SecretBackend | None:
    """The OS keyring if a real one is there (never fail, null, plaintext or file backends)."""
    import keyring
    from keyring.backends import chainer

    backend = keyring.get_keyring()
    if isinstance(backend, chainer.ChainerBackend):
        # The chain holds every installed backend by priority, file and plaintext ones included.
        real = [b for b in backend.backends if _is_os_keyring(b)]
        return real[0] if real else None
    return backend if _is_os_keyring(backend) else None


# How long a cached secret is served without reading the store again. Another process (the CLI,
# another instance of a cluster) may replace a secret under the same reference: callers that know
# the secret's row pass its ``updated_at`` as ``version`` and see a change at once; the rest within this.
SECRET_CACHE_TTL_S = 10.0
SECRET_CACHE_MAX = 10_000


class SecretVault(Protocol):
    """Where secret values are kept: the OS keyring, the encrypted keyring file, or the database."""

    async def read(self, ref: str) -> str | None: ...
    async def write(self, ref: str, value: str) -> None: ...
    async def remove(self, ref: str) -> None: ...


class KeyringVault:
    """A keyring backend (OS keyring or keyrings.cryptfile); file writes locked across processes."""

    def __init__(self, backend: SecretBackend, lock_path: Path | None = None) -> None:
        self._backend = backend
        self._lock_path = lock_path
        self._thread_lock = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._lock_path is None:
                yield
                return
            make_private_folders(self._lock_path.parent)
            with open(self._lock_path, "a", opener=private_opener) as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    async def read(self, ref: str) -> str | None:
        with self._locked():
            try:
                return self._backend.get_password(SERVICE, ref)
            except ValueError as exc:  # wrong master key: AES-GCM tag mismatch
                raise SecretsError("cannot decrypt the keyring: wrong master key?") from exc

    async def write(self, ref: str, value: str) -> None:
        with self._locked():
            self._backend.set_password(SERVICE, ref, value)

    async def remove(self, ref: str) -> None:
        with self._locked():
            try:
                self._backend.delete_password(SERVICE, ref)
            except Exception as exc:  # keyring raises PasswordDeleteError for a missing entry
                if type(exc).__name__ != "PasswordDeleteError":
                    raise


class SecretStore:
    """get/set/delete secrets by reference, with a short cache for the runtime's hot paths."""

    def __init__(self, vault: SecretVault, *, description: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._vault = vault
        self._cache: dict[str, tuple[object, float, str | None]] = {}  # ref -> (version, expires, value)
        self._clock = clock
        self.description = description

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretStore:
        """A keyring store (``secrets.backend: database`` is runtime.control.secret_values')."""
        choice = settings.secrets.backend
        if choice == "database":
            raise SecretsError("secrets.backend is 'database': open it with its database (open_secret_store)")
        if choice in ("auto", "keyring"):
            system = _system_backend()
            if system is not None:
                return cls(KeyringVault(system), description=f"keyring:{type(system).__name__}")
            if choice == "keyring":
                raise SecretsError(
                    "secrets.backend is 'keyring' but no OS keyring is available; use 'auto' or 'cryptfile'"
                )
        path = settings.keyring_path
        master = read_master_key(settings.master_key_path)
        make_private_folders(path.parent)  # keyrings.cryptfile makes the file 0600, a folder with the default mode
        backend = _cryptfile_backend(path, master)
        return cls(KeyringVault(backend, lock_path=path.with_suffix(path.suffix + ".lock")),
                   description=f"cryptfile:{path}")

    async def set(self, ref: str, value: str) -> None:
        if not value:
            raise SecretsError("refusing to store an empty secret")
        await self._vault.write(ref, value)
        self._cache.pop(ref, None)

    async def get(self, ref: str, *, cached: bool = False, version: object = None) -> str | None:
        """The secret, or None. ``cached`` serves repeat lookups from memory (runtime hot paths) for
        SECRET_CACHE_TTL_S, and only while ``version`` (the ``updated_at`` of the row naming the
        secret, when the caller has it) is the one it was read with."""
        now = self._clock()
        if cached and (entry := self._cache.get(ref)) is not None and entry[0] == version and now < entry[1]:
            return entry[2]
        value = await self._vault.read(ref)
        if cached:
            if len(self._cache) >= SECRET_CACHE_MAX:
                self._cache.clear()
            self._cache[ref] = (version, now + SECRET_CACHE_TTL_S, value)
        return value

    async def delete(self, ref: str) -> None:
        self._cache.pop(ref, None)
        await self._vault.remove(ref)

    def forget_cached(self) -> None:
        self._cache.clear()
