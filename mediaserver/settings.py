"""Settings: TOML defaults, then the environment, then command-line flags; validated at start."""

import difflib
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from mediaserver.errors import SettingsError

ENV_PREFIX = "MEDIASERVER_"
DEFAULT_CONFIG_PATH = Path("config/mediaserver.toml")

# The environment variables of the audio cache service this server replaces (see the README).
SEED_ENV = {
    "AUDIO_STORAGE_TYPE": "storage_type",
    "AUDIO_STORAGE_PATH": "storage_path",
    "AUDIO_CACHE_ENABLED": "recording_enabled",
}
_CHOICES = {
    "event_loop": ("uvloop", "asyncio"),
    "stereo_mode": ("encode", "lossless"),
    "storage_type": ("local", "gcs"),
    "log_format": ("auto", "console", "json"),
    "log_level": ("debug", "info", "warning", "error"),
    "transcription_backend": ("pocketsphinx", "openai", "none"),
    "encryption": ("none", "envelope"),
}
_POSITIVE = (
    "flush_interval_s",
    "retention_s",
    "sweep_interval_s",
    "stereo_bitrate_bps",
    "finalize_workers",
    "upload_deadline_s",
    "max_body_bytes",
    "drain_timeout_s",
    "rtp_media_timeout_s",
    "rtp_relatch_after_s",
    "agent_connect_timeout_s",
    "signed_url_expiry_s",
    "finalize_timeout_s",
    "max_calls",
    "call_cpu_share",
    "http_keepalive_timeout_s",
    "http_header_timeout_s",
    "max_connections",
    "console_session_ttl_s",
    "console_sign_in_max_failures",
    "console_sign_in_window_s",
    "job_workers",
    "turn_gap_s",
    "interruption_min_overlap_s",
    "silence_min_s",
    "vad_trim_db",
    "transcription_timeout_s",
    "transcription_max_attempts",
    "transcription_max_upload_bytes",
    "webhook_timeout_s",
    "webhook_max_attempts",
    "webhook_backoff_s",
    "job_visibility_timeout_s",
    "job_max_attempts",
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the server, with its embedded default."""

    recording_enabled: bool = True
    spool_path: Path = Path("./data/spool")
    flush_interval_s: float = 1.0
    retention_s: float = 1800.0
    sweep_interval_s: float = 600.0
    stereo_mode: str = "encode"
    stereo_bitrate_bps: int = 64000
    stereo_complexity: int = 10
    finalize_workers: int = 2
    storage_type: str = "local"
    storage_path: str = "./data"  # local: objects under <path>/recordings/YYYY/MM/DD/
    upload_deadline_s: float = 120.0
    gcs_create_bucket: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    api_token: str = ""
    max_body_bytes: int = 1_048_576
    drain_timeout_s: float = 30.0
    finalize_timeout_s: float = 60.0
    max_calls: int = 500
    max_cpu_share: float = 0.85
    max_loop_lag_ms: float = 20.0
    call_cpu_share: float = 0.02
    http_keepalive_timeout_s: float = 15.0
    http_header_timeout_s: float = 10.0
    max_connections: int = 4096
    rtp_host: str = "127.0.0.1"
    rtp_public_host: str = ""
    rtp_port_min: int = 40000
    rtp_port_max: int = 40999
    rtp_media_timeout_s: float = 30.0
    rtp_relatch_after_s: float = 2.0
    rtp_relatch_any_source: bool = False
    ice_servers: str = ""
    ice_host_addresses: str = ""
    agent_connect_timeout_s: float = 10.0
    end_call_on_agent_exit: bool = False
    agent_opus_complexity: int = 0
    send_silence: bool = True
    caller_backlog_ms: float = 60.0
    partial_frame_wait_ms: int = 20
    signed_url_expiry_s: int = 300
    console_session_ttl_s: float = 43200.0
    console_sign_in_max_failures: int = 5
    console_sign_in_window_s: float = 60.0
    echo_agent_delay_s: float = 1.0
    log_format: str = "auto"
    log_level: str = "info"
    event_loop: str = "uvloop"
    # Post-call jobs
    analysis_enabled: bool = True
    jobs_path: Path = Path("./data/jobs")
    job_workers: int = 2
    vad_mode: int = 3
    vad_frame_ms: int = 30
    vad_min_speech_ms: int = 90
    vad_min_silence_ms: int = 300
    vad_trim_db: float = 35.0
    turn_gap_s: float = 0.5
    interruption_min_overlap_s: float = 0.2
    silence_min_s: float = 5.0
    transcription_backend: str = "pocketsphinx"
    transcription_model: str = ""
    transcription_language: str = ""
    transcription_timeout_s: float = 300.0
    transcription_max_attempts: int = 5
    transcription_max_upload_bytes: int = 25_000_000
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 12
    webhook_backoff_s: float = 2.0
    # Several nodes (empty redis_url: one node, everything in this process)
    node_id: str = ""  # "" = this machine's host name
    public_url: str = ""  # this node's externally reachable base URL (https://node-3.example.com)
    redis_url: str = ""  # e.g. redis://redis:6379/0: node registry, call map and job queue
    storage_shared: bool = False  # local storage_path is a filesystem every node and worker mounts
    job_visibility_timeout_s: float = 60.0  # a job unfinished this long is redone by another worker
    job_max_attempts: int = 3  # a job that keeps failing ends `failed` after this many attempts
    with_worker: bool = False  # with redis_url: `serve` runs jobs too (else only workers do)
    # Recording lifecycle and access (README, "Access", "Audit log", "Retention")
    api_tokens_path: str = ""
    audit_path: Path = Path("./data/audit")
    audit_retention_days: int = 0  # 0: keep forever
    recording_retention_days: int = 0  # 0: keep forever; a call may set its own
    gcs_apply_lifecycle: bool = False
    encryption: str = "none"  # "envelope": AES-256-GCM per recording, key wrapped with RSA
    encryption_public_key_path: str = ""
    encryption_private_key_path: str = ""  # "" : the server stores but cannot play
    kms_key_name: str = ""  # GCS: Cloud KMS key the bucket's objects are written with


_FIELD_TYPES: dict[str, type] = {
    f.name: type(f.default) if not isinstance(f.default, Path) else Path for f in fields(Settings)
}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert a raw value to the field's type, naming the setting when it does not fit."""
    kind = _FIELD_TYPES[name]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is Path:
            return Path(str(value))
        return str(value)
    except (TypeError, ValueError):
        raise SettingsError(
            f"setting {name} ({source}) must be a {kind.__name__}, got {value!r}"
        ) from None


def split_list(value: str) -> list[str]:
    """A comma-separated setting as a list, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def validate_settings(settings: Settings) -> Settings:
    """Reject values that cannot work, naming the setting."""
    for name, choices in _CHOICES.items():
        value = getattr(settings, name)
        if value not in choices:
            raise SettingsError(
                f"setting {name} must be one of {', '.join(choices)}, got {value!r}"
            )
    for name in _POSITIVE:
        if getattr(settings, name) <= 0:
            raise SettingsError(f"setting {name} must be positive, got {getattr(settings, name)!r}")
    if not 0 <= settings.stereo_complexity <= 10:
        raise SettingsError(
            f"setting stereo_complexity must be 0..10, got {settings.stereo_complexity}"
        )
    if not 6000 <= settings.stereo_bitrate_bps <= 510000:
        raise SettingsError(  # RFC 6716 §2.1.1: Opus runs from 6 to 510 kbit/s
            f"setting stereo_bitrate_bps must be 6000..510000, got {settings.stereo_bitrate_bps}"
        )
    if not 0 <= settings.agent_opus_complexity <= 10:
        raise SettingsError(
            f"setting agent_opus_complexity must be 0..10, got {settings.agent_opus_complexity}"
        )
    if not 0.0 <= settings.max_cpu_share <= 1.0:
        raise SettingsError(
            f"setting max_cpu_share is a share of one core (0..1, 0 = off),"
            f" got {settings.max_cpu_share}"
        )
    if settings.max_loop_lag_ms < 0:
        raise SettingsError(
            f"setting max_loop_lag_ms must be 0 (off) or positive, got {settings.max_loop_lag_ms}"
        )
    if not 0 <= settings.port <= 65535:
        raise SettingsError(f"setting port must be 0..65535, got {settings.port}")
    if not 1024 <= settings.rtp_port_min <= settings.rtp_port_max <= 65535:
        raise SettingsError(
            "settings rtp_port_min..rtp_port_max must be a range within 1024..65535,"
            f" got {settings.rtp_port_min}..{settings.rtp_port_max}"
        )
    if not 0 <= settings.echo_agent_delay_s <= 10:
        raise SettingsError(
            f"setting echo_agent_delay_s must be 0..10, got {settings.echo_agent_delay_s}"
        )
    if not 0 <= settings.caller_backlog_ms <= 10_000:
        raise SettingsError(
            "setting caller_backlog_ms must be 0 (no limit) to 10000,"
            f" got {settings.caller_backlog_ms}"
        )
    if settings.partial_frame_wait_ms not in range(0, 201, 20):
        raise SettingsError(
            "setting partial_frame_wait_ms must be a multiple of 20 from 0 to 200,"
            f" got {settings.partial_frame_wait_ms}"
        )
    if not settings.storage_path:
        raise SettingsError("setting storage_path must not be empty")
    if settings.vad_mode not in (0, 1, 2, 3):
        raise SettingsError(f"setting vad_mode must be 0..3, got {settings.vad_mode}")
    if settings.vad_frame_ms not in (10, 20, 30):
        raise SettingsError(
            f"setting vad_frame_ms must be 10, 20 or 30, got {settings.vad_frame_ms}"
        )
    if settings.vad_min_speech_ms < 0 or settings.vad_min_silence_ms < 0:
        raise SettingsError(
            "settings vad_min_speech_ms and vad_min_silence_ms must not be negative"
        )
    if settings.webhook_url and not settings.webhook_url.startswith(("http://", "https://")):
        raise SettingsError(
            f"setting webhook_url must be an http:// or https:// URL, got {settings.webhook_url!r}"
        )
    _validate_cluster(settings)
    _validate_lifecycle(settings)
    return settings


def _validate_cluster(settings: Settings) -> None:
    """The settings of several nodes: addresses that parse, storage every node can read."""
    if settings.public_url and not settings.public_url.startswith(("http://", "https://")):
        raise SettingsError(
            f"setting public_url must be an http:// or https:// URL, got {settings.public_url!r}"
        )
    if settings.redis_url and not settings.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise SettingsError(
            "setting redis_url must be a redis://, rediss:// or unix:// URL,"
            f" got {settings.redis_url!r}"
        )
    if settings.redis_url and settings.storage_type == "local" and not settings.storage_shared:
        raise SettingsError(
            "setting redis_url runs several nodes and workers, which must all read the recordings:"
            " use storage_type = gcs, or put storage_path on a shared filesystem and set"
            " storage_shared = true"
        )


def resolve_node_id(settings: Settings) -> str:
    """This node's id: the node_id setting, or the host name."""
    return settings.node_id or socket.gethostname()


MAX_RETENTION_DAYS = 36500  # a hundred years: any longer is "keep forever", which is 0


def _validate_lifecycle(settings: Settings) -> None:
    """Retention, encryption and GCS-only settings fit together."""
    for name in ("recording_retention_days", "audit_retention_days"):
        days = getattr(settings, name)
        if not 0 <= days <= MAX_RETENTION_DAYS:
            raise SettingsError(
                f"setting {name} must be 0 (keep forever) .. {MAX_RETENTION_DAYS} days, got {days}"
            )
    for name in ("gcs_apply_lifecycle", "kms_key_name"):
        if getattr(settings, name) and settings.storage_type != "gcs":
            raise SettingsError(f"setting {name} needs storage_type = gcs")
    if settings.encryption == "envelope" and not settings.encryption_public_key_path:
        raise SettingsError(
            "setting encryption = envelope needs encryption_public_key_path: the operator's"
            " RSA public key (PEM)"
        )


def find_unknown_env(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """MEDIASERVER_* variables that name no setting, each with the nearest setting's variable."""
    known = {name.upper(): ENV_PREFIX + name.upper() for name in _FIELD_TYPES}
    known["CONFIG"] = f"{ENV_PREFIX}CONFIG"
    unknown: list[tuple[str, str | None]] = []
    for env_name in sorted(environ):
        upper = env_name.upper()
        if not upper.startswith(ENV_PREFIX) or env_name in known.values():
            continue
        # Compared without the prefix, which every candidate shares and would make all look alike.
        nearest = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), known, n=1, cutoff=0.6)
        unknown.append((env_name, known[nearest[0]] if nearest else None))
    return unknown


def load_settings(
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from the TOML file, the environment and explicit overrides, in order."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_path or (
        Path(env[f"{ENV_PREFIX}CONFIG"]) if f"{ENV_PREFIX}CONFIG" in env else None
    )
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        try:
            table = tomllib.loads(path.read_text())
        except OSError as exc:
            raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        for name, value in table.items():
            if name not in _FIELD_TYPES:
                raise SettingsError(f"config file {path} has unknown setting {name!r}")
            values[name] = _coerce(name, value, str(path))
    for env_name, name in SEED_ENV.items():
        if env_name in env:
            values[name] = _coerce(name, env[env_name], env_name)
    for name in _FIELD_TYPES:
        env_name = ENV_PREFIX + name.upper()
        if env_name in env:
            values[name] = _coerce(name, env[env_name], env_name)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    return validate_settings(replace(Settings(), **values))
