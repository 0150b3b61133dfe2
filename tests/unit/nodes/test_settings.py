"""The nodes' settings: read from the environment like the others, secrets masked in the settings' repr."""

from __future__ import annotations

import pytest

from gateway.config import SettingsError, load_settings


def test_salt_settings_from_the_environment_with_secrets_masked() -> None:
    settings = load_settings(
        environ={
            "REMOTEGPU_SALT_API_URL": "http://127.0.0.1:48000",
            "REMOTEGPU_SALT_API_PASSWORD": "salt-shared-secret",
            "REMOTEGPU_NODE_BOOTSTRAP_SECRET": "token-signing-secret",
            "REMOTEGPU_SALT_MASTER_PORT": "45506",
            "REMOTEGPU_NODE_POLL_SECONDS": "0.5",
        }
    )
    assert settings.salt_api_url == "http://127.0.0.1:48000" and settings.salt_api_eauth == "sharedsecret"
    assert settings.salt_master_port == 45506 and settings.node_poll_seconds == 0.5
    text = repr(settings)
    assert "salt-shared-secret" not in text and "token-signing-secret" not in text
    assert "salt_api_password='***'" in text and "node_bootstrap_secret='***'" in text
    assert "salt_api_password=None" in repr(load_settings(environ={}))


def test_bad_values_name_the_setting() -> None:
    with pytest.raises(SettingsError, match="salt_master_port"):
        load_settings(environ={"REMOTEGPU_SALT_MASTER_PORT": "0"})
