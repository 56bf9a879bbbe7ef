"""Config: YAML + VOICECTL_* overrides -> frozen settings; and config.example.yaml documents every key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args, get_origin

import pydantic
import pytest
import yaml

from runtime.config import ConfigError, Settings, build_settings, find_config_path, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults(tmp_path):
    settings = load_settings(tmp_path / "absent.yaml", environ={}, must_exist=False)
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8080
    assert settings.database.url == "sqlite:///voicectl.db"
    assert settings.database_url == f"sqlite:///{tmp_path}/voicectl.db"
    assert settings.secrets.backend == "auto"
    assert settings.master_key_path == tmp_path / "master.key"
    assert settings.limits.rate_limits.runtime.session.limit == 10
    assert settings.limits.rate_limits.admin.read is None
    assert settings.providers.defaults.llm == "rules"
    assert build_settings({}, tmp_path) == settings
    empty = write_config(tmp_path / "empty.yaml", "")
    assert load_settings(empty, environ={}) == settings


def test_env_overrides_with_yaml_scalars(tmp_path):
    config = write_config(tmp_path / "config.yaml", "server:\n  port: 9000\n  public_url: https://a.example\n")
    environ = {
        "VOICECTL_DATABASE__URL": "postgresql://voicectl@127.0.0.1:5432/voicectl",
        "VOICECTL_LIMITS__RATE_LIMITS__RUNTIME__READ__LIMIT": "1000",
        "VOICECTL_SERVER__PUBLIC_URL": "null",
        "VOICECTL_SERVER__SHUTDOWN_GRACE_S": "2.5",
        "VOICECTL_LOGGING__LEVEL": "debug",
        "VOICECTL_TELEPHONY__WEBRTC__ICE_SERVERS": "[stun:stun.example.com:3478]",
        "VOICECTL_CONFIG": "ignored-here",
        "VOICECTL_MASTER_KEY": "not-an-override",
        "OTHER": "x",
    }
    settings = load_settings(config, environ=environ)
    assert settings.database.url == "postgresql://voicectl@127.0.0.1:5432/voicectl"
    assert settings.database_url == settings.database.url
    read = settings.limits.rate_limits.runtime.read
    assert read.limit == 1000 and isinstance(read.limit, int)
    assert read.window_s == 900  # sibling keeps its default
    assert settings.limits.rate_limits.runtime.write.limit == 100  # other classes keep theirs
    assert settings.limits.rate_limits.runtime.session.limit == 10
    assert settings.server.port == 9000  # from the file, untouched by env
    assert settings.server.public_url is None  # env wins over the file; "null" parses as None
    assert settings.server.shutdown_grace_s == 2.5
    assert settings.logging.level == "debug"
    assert settings.telephony.webrtc.ice_servers == ["stun:stun.example.com:3478"]


def test_env_overrides_from_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VOICECTL_SERVER__PORT", "9100")
    monkeypatch.setenv("VOICECTL_LIMITS__RATE_LIMITS__ADMIN__READ", "{limit: 5, window_s: 60}")
    settings = load_settings(tmp_path / "absent.yaml", must_exist=False)
    assert settings.server.port == 9100
    assert (settings.limits.rate_limits.admin.read.limit, settings.limits.rate_limits.admin.read.window_s) == (5, 60)


def test_partial_file_sections_keep_defaults(tmp_path):
    config = write_config(
        tmp_path / "config.yaml",
        "limits:\n  rate_limits:\n    runtime:\n      read: {limit: 7, window_s: 60}\n      session: null\n",
    )
    limits = load_settings(config, environ={}).limits.rate_limits.runtime
    assert (limits.read.limit, limits.read.window_s) == (7, 60)
    assert limits.session is None
    assert limits.realtime.limit == 30 and limits.write.limit == 100


def test_bad_env_variable_names(tmp_path):
    with pytest.raises(ConfigError, match="VOICECTL_DATABASE__URL"):
        load_settings(tmp_path / "absent.yaml", environ={"VOICECTL_PORT": "1"}, must_exist=False)
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_settings(tmp_path / "absent.yaml", environ={"VOICECTL_SERVER__PROT": "1"}, must_exist=False)


@pytest.mark.parametrize(
    ("yaml_text", "path", "bad", "expected"),
    [
        ("server:\n  port: abc\n", "server.port", "'abc'", "integer"),
        ("server:\n  port: 70000\n", "server.port", "70000", "65535"),
        ("server:\n  public_url: voice.example.com\n", "server.public_url", "'voice.example.com'", "http"),
        ("database:\n  url: mysql://x\n", "database.url", "'mysql://x'", "sqlite:///"),
        ("secrets:\n  backend: plaintext\n", "secrets.backend", "'plaintext'", "cryptfile"),
        ("limits:\n  rate_limits:\n    runtime:\n      read: {limit: 0, window_s: 5}\n",
         "limits.rate_limits.runtime.read.limit", "0", "greater than or equal to 1"),
        ("logging:\n  level: loud\n", "logging.level", "'loud'", "'debug'"),
    ],
)
def test_invalid_values_name_path_value_and_expectation(tmp_path, yaml_text, path, bad, expected):
    config = write_config(tmp_path / "config.yaml", yaml_text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(config, environ={})
    message = str(excinfo.value)
    line = next((ln for ln in message.splitlines() if path + ":" in ln), None)
    assert line is not None, message
    assert bad in line and expected in line, line
    assert str(config) in message


def test_invalid_env_value_is_reported_too(tmp_path):
    with pytest.raises(ConfigError, match=r"server\.port: got 'abc'"):
        load_settings(tmp_path / "absent.yaml", environ={"VOICECTL_SERVER__PORT": "abc"}, must_exist=False)


@pytest.mark.parametrize(
    ("yaml_text", "path"),
    [
        ("sever:\n  port: 1\n", "sever"),
        ("server:\n  prot: 1\n", "server.prot"),
        ("limits:\n  rate_limits:\n    runtime:\n      reads: null\n", "limits.rate_limits.runtime.reads"),
        ("base_dir: /etc\n", "base_dir"),
    ],
)
def test_unknown_keys_are_rejected_by_path(tmp_path, yaml_text, path):
    config = write_config(tmp_path / "config.yaml", yaml_text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(config, environ={})
    assert f"{path}: unknown key" in str(excinfo.value)


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = write_config(
        tmp_path / "etc" / "config.yaml",
        "database:\n  url: sqlite:///data/v.db\nsecrets:\n  master_key_file: keys/master.key\n"
        "recording:\n  dir: rec\n",
    )
    settings = load_settings(config, environ={})
    folder = tmp_path / "etc"
    assert settings.database_url == f"sqlite:///{folder}/data/v.db"
    assert settings.master_key_path == folder / "keys" / "master.key"
    assert settings.keyring_path == folder / "secrets.cfg"
    assert settings.recording_dir == folder / "rec"
    absolute = write_config(tmp_path / "abs.yaml", "database:\n  url: sqlite:////srv/voicectl/v.db\n")
    assert load_settings(absolute, environ={}).database_url == "sqlite:////srv/voicectl/v.db"
    # A relative --config path resolves too.
    monkeypatch.chdir(tmp_path)
    assert load_settings("etc/config.yaml", environ={}).database_url == f"sqlite:///{folder}/data/v.db"


def test_missing_file_points_at_init(tmp_path):
    with pytest.raises(ConfigError, match="voicectl init") as excinfo:
        load_settings(tmp_path / "nope.yaml", environ={})
    assert "nope.yaml" in str(excinfo.value)


def test_config_file_discovery(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config_path() == Path("config.yaml")
    monkeypatch.setenv("VOICECTL_CONFIG", str(tmp_path / "env.yaml"))
    assert find_config_path() == tmp_path / "env.yaml"
    assert find_config_path("cli.yaml") == Path("cli.yaml")


def test_not_yaml_or_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write_config(tmp_path / "a.yaml", "server: [unclosed\n"), environ={})
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(write_config(tmp_path / "b.yaml", "- a\n- b\n"), environ={})


def test_settings_are_frozen(tmp_path):
    settings = build_settings({}, tmp_path)
    with pytest.raises(pydantic.ValidationError):
        settings.server.port = 1  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        settings.database = settings.database  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        settings.limits.rate_limits.runtime.read.limit = 1  # type: ignore[misc]


# config.example.yaml


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    if get_origin(annotation) in (dict, list):
        return None  # dict- and list-valued fields are leaves
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
            return candidate
    return None


def _undocumented(model: type[pydantic.BaseModel], node: Any, prefix: str = "") -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # not a YAML key (base_dir)
        path = f"{prefix}{name}"
        if not isinstance(node, dict) or name not in node:
            missing.append(path)
            continue
        sub = _model_in(field.annotation)
        if sub is not None and isinstance(node[name], dict):
            missing.extend(_undocumented(sub, node[name], path + "."))
        elif sub is not None and node[name] is not None:
            missing.append(path + " (expected a mapping)")
    return missing


_KEY_LINE = re.compile(r"^\s*(?:-\s+)?[A-Za-z_][\w-]*\s*:(?:\s|$)")


def _uncommented_keys(text: str) -> list[str]:
    lines = text.splitlines()
    bad = []
    for number, line in enumerate(lines, start=1):
        if line.lstrip().startswith("#") or not _KEY_LINE.match(line):
            continue
        inline = re.search(r"\s#", line) is not None
        above = number >= 2 and lines[number - 2].lstrip().startswith("#")
        if not (inline or above):
            bad.append(f"line {number}: {line.strip()}")
    return bad


@pytest.fixture
def example_text() -> str:
    if not EXAMPLE.exists():
        pytest.fail(f"{EXAMPLE} is missing: it must document every config key")
    return EXAMPLE.read_text()


def test_example_config_loads_without_unknown_keys(example_text):
    try:
        load_settings(EXAMPLE, environ={})
    except ConfigError as exc:
        pytest.fail(f"config.example.yaml does not load:\n{exc}")


def test_example_config_documents_every_setting(example_text):
    missing = _undocumented(Settings, yaml.safe_load(example_text) or {})
    assert not missing, f"keys of Settings missing from config.example.yaml: {missing}"


def test_example_config_has_a_comment_for_every_key(example_text):
    bad = _uncommented_keys(example_text)
    assert not bad, "keys without a comment (same line or directly above):\n" + "\n".join(bad)


def test_example_config_shows_the_defaults(example_text):
    example = load_settings(EXAMPLE, environ={})
    assert example == build_settings({}, EXAMPLE.resolve().parent)


def test_example_checks_catch_problems():
    """The checkers themselves: an undocumented key and a bare key are found."""
    assert "server.port" in _undocumented(Settings, {"server": {"host": "x"}})
    assert "limits.rate_limits.runtime.read.window_s" in _undocumented(
        Settings, {"limits": {"rate_limits": {"runtime": {"read": {"limit": 1}}}}}
    )
    assert "telephony" in _undocumented(Settings, {})
    assert _uncommented_keys("# doc\na: 1\nb: 2\nc: 3  # doc\n") == ["line 3: b: 2"]
