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
