from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Settings, SettingsError, default_data_dir, load_settings


def test_defaults_need_no_configuration() -> None:
    settings = load_settings(environ={})
    assert settings.database_url == f"sqlite:///{default_data_dir() / 'remotegpu.db'}"
    assert (settings.host, settings.port, settings.auto_migrate) == ("127.0.0.1", 8000, True)


def test_environment_overrides_file_overrides_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "gw.toml"
    toml.write_text('port = 9000\nlog_level = "DEBUG"\nworkspace_creation = "admin"\n')
    settings = load_settings(toml, environ={"REMOTEGPU_PORT": "9100", "REMOTEGPU_AUTO_MIGRATE": "false"})
    assert settings.port == 9100  # env beats file
    assert settings.log_level == "DEBUG"  # file beats default
    assert settings.workspace_creation == "admin"
    assert settings.auto_migrate is False
    via_env = load_settings(environ={"REMOTEGPU_CONFIG": str(toml)})
    assert via_env.port == 9000


def test_unrelated_environment_is_ignored() -> None:
    settings = load_settings(environ={"REMOTEGPU_NOT_A_SETTING": "x", "PORT": "1", "REMOTEGPU_URL": "http://x"})
    assert settings.port == 8000


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REMOTEGPU_PORT": "eighty"}, "port"),
        ({"REMOTEGPU_PORT": "70000"}, "port"),
        ({"REMOTEGPU_LOG_LEVEL": "LOUD"}, "log_level"),
        ({"REMOTEGPU_DEFAULT_CURRENCY": "euro"}, "default_currency"),
        ({"REMOTEGPU_ACCESS_CACHE_SECONDS": "-1"}, "access_cache_seconds"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(environ=env)


def test_bad_files_are_reported(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(SettingsError, match="colour"):
        load_settings(unknown, environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(broken, environ={})
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_passwords_never_show() -> None:
    settings = Settings(database_url="postgresql://gw:hunter2@db.example/remotegpu")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.database_url_redacted
    assert "db.example" in settings.database_url_redacted
