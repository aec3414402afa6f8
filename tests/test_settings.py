"""Settings: TOML defaults, environment, flags, and clear errors for invalid values."""

from dataclasses import Field, fields
from pathlib import Path

import pytest

from mediaserver.errors import SettingsError
from mediaserver.server import start_server
from mediaserver.settings import Settings, find_unknown_env, load_settings

REPO = Path(__file__).resolve().parent.parent


def test_bundled_toml_matches_embedded_defaults() -> None:
    """config/mediaserver.toml states exactly the embedded defaults."""
    loaded = load_settings(config_path=REPO / "config" / "mediaserver.toml", environ={})
    assert loaded == Settings()


def test_precedence_is_file_then_environment_then_flags(tmp_path: Path) -> None:
    """The environment overrides the file and flags override the environment."""
    config = tmp_path / "s.toml"
    config.write_text('stereo_mode = "lossless"\nport = 9000\nretention_s = 60\n')
    env = {"MEDIASERVER_PORT": "9100", "MEDIASERVER_RETENTION_S": "120"}
    settings = load_settings(config_path=config, environ=env, overrides={"retention_s": 5})
    assert (settings.stereo_mode, settings.port, settings.retention_s) == ("lossless", 9100, 5.0)


def test_seed_variables_are_honoured() -> None:
    """AUDIO_STORAGE_TYPE, AUDIO_STORAGE_PATH and AUDIO_CACHE_ENABLED set the storage settings."""
    env = {
        "AUDIO_STORAGE_TYPE": "gcs",
        "AUDIO_STORAGE_PATH": "my-audio-bucket",
        "AUDIO_CACHE_ENABLED": "false",
    }
    settings = load_settings(environ=env, config_path=REPO / "config" / "mediaserver.toml")
    assert (settings.storage_type, settings.storage_path, settings.recording_enabled) == (
        "gcs",
        "my-audio-bucket",
        False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEDIASERVER_PORT": "eighty"}, "setting port .*MEDIASERVER_PORT.* must be a int"),
        ({"MEDIASERVER_STEREO_MODE": "mp3"}, "setting stereo_mode must be one of"),
        ({"AUDIO_STORAGE_TYPE": "s3"}, "setting storage_type must be one of"),
        ({"AUDIO_CACHE_ENABLED": "maybe"}, "setting recording_enabled .*AUDIO_CACHE_ENABLED"),
        ({"MEDIASERVER_RETENTION_S": "-1"}, "setting retention_s must be positive"),
        ({"MEDIASERVER_STEREO_BITRATE_BPS": "1000"}, "stereo_bitrate_bps must be 6000..510000"),
        ({"MEDIASERVER_PORT": "70000"}, "setting port must be 0..65535"),
    ],
)
def test_invalid_settings_name_the_setting(env: dict[str, str], message: str) -> None:
    """An invalid value fails at load with a message naming the setting and its source."""
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=env, config_path=REPO / "config" / "mediaserver.toml")


def test_unknown_key_and_bad_toml_in_file(tmp_path: Path) -> None:
    """A config file with an unknown key or broken TOML is refused with the file named."""
    unknown = tmp_path / "u.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(SettingsError, match="unknown setting 'colour'"):
        load_settings(config_path=unknown, environ={})
    broken = tmp_path / "b.toml"
    broken.write_text("port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(config_path=broken, environ={})
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(config_path=tmp_path / "missing.toml", environ={})


@pytest.mark.parametrize(
    "field", [f for f in fields(Settings) if f.type in (int, float, "int", "float")]
)
def test_every_numeric_setting_can_come_from_the_environment(field: Field[object]) -> None:
    """Each numeric field is read from its MEDIASERVER_ variable."""
    special = {
        "stereo_bitrate_bps": 24000,
        "stereo_complexity": 5,
        "rtp_port_min": 40500,
        "max_cpu_share": 0.5,
        "vad_mode": 2,
        "vad_frame_ms": 20,
        "partial_frame_wait_ms": 40,
    }
    value = {**special, "rtp_port_max": 40500}.get(field.name, 7)
    env = {f"MEDIASERVER_{field.name.upper()}": str(value)}
    settings = load_settings(environ=env, config_path=REPO / "config" / "mediaserver.toml")
    assert getattr(settings, field.name) == value


@pytest.mark.parametrize(
    ("environ", "reported"),
    [
        ({"MEDIASERVER_API_TOKN": "x"}, [("MEDIASERVER_API_TOKN", "MEDIASERVER_API_TOKEN")]),
        ({"MEDIASERVER_RETENTION": "60"}, [("MEDIASERVER_RETENTION", "MEDIASERVER_RETENTION_S")]),
        ({"mediaserver_port": "9000"}, [("mediaserver_port", "MEDIASERVER_PORT")]),
        ({"MEDIASERVER_ZZZZZZZZ": "1"}, [("MEDIASERVER_ZZZZZZZZ", None)]),
        ({"MEDIASERVER_PORT": "9000", "MEDIASERVER_CONFIG": "x.toml", "HOME": "/root"}, []),
        ({"AUDIO_STORAGE_PATH": "x", "MEDIA_SERVER_PORT": "1"}, []),
    ],
)
def test_unknown_variables_are_found_with_the_nearest_setting(
    environ: dict[str, str], reported: list[tuple[str, str | None]]
) -> None:
    """A MEDIASERVER_* variable that names no setting is reported with the closest one's name."""
    assert find_unknown_env(environ) == reported


def test_several_nodes_need_storage_every_node_reads() -> None:
    """redis_url with local storage is refused unless the path is declared shared; GCS is fine."""
    redis = {"MEDIASERVER_REDIS_URL": "redis://redis:6379/0"}
    with pytest.raises(SettingsError, match="storage_shared"):
        load_settings(environ=redis)
    shared = load_settings(environ={**redis, "MEDIASERVER_STORAGE_SHARED": "true"})
    assert shared.redis_url == "redis://redis:6379/0"
    gcs = load_settings(environ={**redis, "AUDIO_STORAGE_TYPE": "gcs"})
    assert gcs.storage_type == "gcs"
    with pytest.raises(SettingsError, match="redis_url"):
        load_settings(environ={"MEDIASERVER_REDIS_URL": "localhost:6379"})
    with pytest.raises(SettingsError, match="public_url"):
        load_settings(environ={"MEDIASERVER_PUBLIC_URL": "node-3:8080"})


async def test_a_node_of_several_must_name_its_public_url(tmp_path: Path) -> None:
    """serve refuses redis_url without public_url, before listening or touching Redis."""
    settings = Settings(
        redis_url="redis://127.0.0.1:9/0", storage_type="gcs", storage_path="bucket"
    )
    with pytest.raises(SettingsError, match="public_url is required"):
        await start_server(settings)
