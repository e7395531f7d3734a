"""The app's settings, read once at start-up: flags > USAM_* environment variables > defaults.

parse_config is the one place app/ reads the environment (tests/app/test_settings.py walks the
package for others); everything downstream reads ctx.config.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

from study.settings import SettingsError, StudySettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
SAMESITE_CHOICES = ("Strict", "Lax", "None")
# Hugging Face Spaces' proxy connects from private addresses and appends the client's address
SPACES_PROXIES = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,127.0.0.1/32,::1/128"
SESSION_BYTES_PER_VOXEL = 6   # what a session holds per voxel: float32 volume + label map + reference (uint8)


@dataclass(frozen=True)
class AppLimits:
    """What one visitor's request and session may cost (README "Limits", docs/SECURITY.md).

    Read once at start-up (USAM_* environment variables, see LIMIT_ENV) and passed down: the
    handlers read them from ctx.config.limits, never from the environment."""

    max_upload_mb: int = 1024          # one uploaded file (Gradio's max_file_size as well)
    max_voxels: int = 1 << 27          # one volume (512^3)
    session_memory_mb: int = 512       # what one session's volume may need: reading it and keeping it
    total_memory_mb: int = 4096        # what all open sessions of the process may hold together
    max_unzipped_mb: int = 1024        # total bytes a zip may extract (also at most session_memory_mb)
    max_zip_members: int = 5000
    max_points_per_slice: int = 64     # prompts on one slice
    max_history: int = 50              # undo states per slice
    max_history_mb: int = 32           # undo states of a whole session (compressed masks)
    max_replay_actions: int = 1000     # actions of one replayed session file
    max_session_file_kb: int = 2048    # size of a session JSON to replay

    @property
    def session_memory_bytes(self) -> int:
        """The per-session memory budget in bytes."""
        return int(self.session_memory_mb) << 20

    def volume_limits(self, budget: int | None = None) -> Any:
        """usam.volumes.VolumeLimits for reading one upload under these limits (budget: bytes granted,
        at most the session budget)."""
        from usam.volumes import VolumeLimits

        budget = self.session_memory_bytes if budget is None else min(int(budget), self.session_memory_bytes)
        return VolumeLimits(max_file_bytes=int(self.max_upload_mb) << 20,
                            max_voxels=min(int(self.max_voxels), budget // SESSION_BYTES_PER_VOXEL),
                            max_decode_bytes=budget, max_unzipped_bytes=int(self.max_unzipped_mb) << 20,
                            max_zip_members=int(self.max_zip_members))


# AppLimits field -> environment variable read by parse_config
LIMIT_ENV = {"max_upload_mb": "USAM_MAX_UPLOAD_MB", "max_voxels": "USAM_MAX_VOXELS",
             "session_memory_mb": "USAM_SESSION_MEMORY_MB", "total_memory_mb": "USAM_TOTAL_MEMORY_MB",
             "max_unzipped_mb": "USAM_MAX_UNZIPPED_MB",
             "max_zip_members": "USAM_MAX_ZIP_MEMBERS", "max_points_per_slice": "USAM_MAX_POINTS_PER_SLICE",
             "max_history": "USAM_MAX_HISTORY", "max_history_mb": "USAM_MAX_HISTORY_MB",
             "max_replay_actions": "USAM_MAX_REPLAY_ACTIONS", "max_session_file_kb": "USAM_MAX_SESSION_FILE_KB"}


def limits_from_env(env: dict[str, str]) -> AppLimits:
    """AppLimits with the USAM_* overrides of LIMIT_ENV; a value that is not a positive integer is refused."""
    kw: dict[str, int] = {}
    for name, var in LIMIT_ENV.items():
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"{var} must be a whole number, not {raw[:20]!r}") from None
        if value < 1:
            raise ValueError(f"{var} must be at least 1, not {value}")
        kw[name] = value
    return AppLimits(**kw)


@dataclass
class AppConfig:
    """Start-up configuration (flags > environment > defaults)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    checkpoint: str | None = None
    device: str = "auto"
    demo_size: str = "full"
    env: dict[str, str] = field(default_factory=dict)
    limits: AppLimits = field(default_factory=AppLimits)
    study: StudySettings = field(default_factory=StudySettings)   # USAM_STUDY_*, USAM_LOGIN_*
    trusted_proxies: str = ""        # USAM_TRUSTED_PROXIES: addresses / CIDRs whose X-Forwarded-For is believed
    cookie_samesite: str = "Lax"     # USAM_COOKIE_SAMESITE of the browser cookie (app/security.py)
    export_keep_s: float = 120.0     # USAM_EXPORT_KEEP_S: an admin export's folder is deleted this long after delivery


def _security_from_env(env: dict[str, str]) -> dict[str, Any]:
    """AppConfig's trusted_proxies / cookie_samesite / export_keep_s from the environment (Spaces defaults
    when SPACE_ID is set); a bad value is refused with a message naming its variable."""
    spaces = bool(env.get("SPACE_ID"))
    proxies = env.get("USAM_TRUSTED_PROXIES")
    same = (env.get("USAM_COOKIE_SAMESITE") or "").strip() or ("None" if spaces else "Lax")
    match = [c for c in SAMESITE_CHOICES if c.lower() == same.lower()]
    if not match:
        raise ValueError(f"USAM_COOKIE_SAMESITE must be one of {', '.join(SAMESITE_CHOICES)}, not {same[:20]!r}")
    keep_text = (env.get("USAM_EXPORT_KEEP_S") or "").strip() or "120"
    try:
        keep = float(keep_text)
    except ValueError:
        keep = float("nan")
    if not 0 <= keep <= 86400:
        raise ValueError(f"USAM_EXPORT_KEEP_S must be a number of seconds from 0 to 86400, not {keep_text[:20]!r}")
    return dict(trusted_proxies=(SPACES_PROXIES if spaces else "") if proxies is None else proxies,
                cookie_samesite=match[0], export_keep_s=keep)


def parse_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> AppConfig:
    """Parse --host/--port/--checkpoint/--device with USAM_* environment fallbacks; the limits, the
    server's security settings and the study's settings (study.settings.StudySettings) from the environment."""
    env = dict(os.environ if environ is None else environ)
    p = argparse.ArgumentParser(prog="app.py", description="U-SAM Studio (Gradio app)")
    # on Hugging Face Spaces (SPACE_ID set) the server must listen on all interfaces
    host = env.get("USAM_HOST") or ("0.0.0.0" if env.get("SPACE_ID") else DEFAULT_HOST)
    p.add_argument("--host", default=host,
                   help="interface to bind (env USAM_HOST; default 127.0.0.1, on Hugging Face Spaces 0.0.0.0)")
    p.add_argument("--port", type=int, default=int(env.get("USAM_PORT", env.get("GRADIO_SERVER_PORT", DEFAULT_PORT))),
                   help="port (env USAM_PORT; default 7860)")
    p.add_argument("--checkpoint", default=env.get("USAM_CHECKPOINT") or None,
                   help="U-SAM weights (.safetensors; env USAM_CHECKPOINT; default: checkpoints/, then the demo)")
    p.add_argument("--device", default=env.get("USAM_DEVICE", "auto"),
                   help="torch device: auto | cpu | cuda | cuda:N (env USAM_DEVICE)")
    p.add_argument("--demo-size", default=env.get("USAM_DEMO_SIZE", "full"), choices=("small", "full"),
                   help="demo phantoms: full (512^2, as the demo weights were trained) or small (128^2, fast); "
                        "env USAM_DEMO_SIZE")
    a = p.parse_args(argv)
    try:
        limits = limits_from_env(env)
        security = _security_from_env(env)
        study = StudySettings.from_env(env)
    except (ValueError, SettingsError) as exc:
        p.error(str(exc))
    return AppConfig(host=a.host, port=a.port, checkpoint=a.checkpoint, device=a.device,
                     demo_size=a.demo_size, env={k: v for k, v in env.items() if k.startswith("USAM_")},
                     limits=limits, study=study, **security)
