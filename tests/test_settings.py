from pathlib import Path

import pytest

from app.settings import Settings, SettingsError


def test_defaults_put_everything_under_var_in_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    assert s.home == tmp_path.resolve() / "var"
    assert s.db_url == f"sqlite:///{tmp_path.resolve() / 'var' / 'platform.db'}"
    assert s.scheduler_address is None
    assert (s.port, s.address) == (5006, "localhost")
    assert s.weights_dir == s.home / "weights"


def test_environment_overrides(tmp_path):
    s = Settings.from_env({
        "HELICAL_PLATFORM_HOME": str(tmp_path / "h"),
        "HELICAL_PLATFORM_DB_URL": "postgresql://u:secret@db/helical",
        "DASK_SCHEDULER_ADDRESS": "tcp://10.0.0.5:8786",
        "HELICAL_PLATFORM_PORT": "8080",
        "HELICAL_PLATFORM_ADDRESS": "0.0.0.0",
    })
    assert s.home == Path(tmp_path / "h").resolve()
    assert s.scheduler_address == "tcp://10.0.0.5:8786"
    assert (s.port, s.address) == (8080, "0.0.0.0")
    assert "secret" not in s.describe()["database"]


@pytest.mark.parametrize("value", ["eighty", "0", "-3"])
def test_a_bad_port_names_the_variable(value):
    with pytest.raises(SettingsError, match="HELICAL_PLATFORM_PORT"):
        Settings.from_env({"HELICAL_PLATFORM_PORT": value})


def test_the_settings_a_server_logs_name_every_setting_and_no_secret(tmp_path):
    s = Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "h"),
                           "HELICAL_PLATFORM_DB_URL": "postgresql://u:pg-secret-77@db/helical",
                           "HELICAL_PLATFORM_API_TOKEN": "token-secret-99", "HELICAL_PLATFORM_ADMINS": "carol, dan",
                           "HELICAL_PLATFORM_MAX_UPLOAD_MB": "64"})
    shown = s.public()
    assert set(shown) == set(Settings.__dataclass_fields__)
    assert shown["api_token"] == "set" and Settings.from_env({}).public()["api_token"] == "unset"
    assert shown["admins"] == "carol, dan" and shown["max_upload_mb"] == "64"
    text = str(shown)
    assert "token-secret-99" not in text and "pg-secret-77" not in text and "db/helical" in shown["db_url"]
