"""Zip extraction with caps: names, member count, sizes and ratios checked before the first byte is written."""
from __future__ import annotations

import logging
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from usam.errors import VolumeError
from usam.volumes.limits import READ_CHUNK, VolumeLimits
from usam.volumes.messages import mib, scrub

log = logging.getLogger("usam.volumes")


def _safe_member_name(name: str) -> bool:
    """A zip member name that stays inside the extraction folder."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or ":" in name.split("/")[0]:
        return False
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return ".." not in parts and not any(":" in p for p in parts)


def extract_zip(path: Path, dest: Path, limits: VolumeLimits) -> int:
    """Extract a zip after checking names, member count, sizes and ratios (zip bombs); returns bytes written.

    Every size rule is applied to the central directory before the first byte is written, and
    the written bytes are counted again while streaming (a member's header may lie)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise VolumeError(f"{path.name} is not a readable zip file ({scrub(exc)})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_zip_members:
            raise VolumeError(f"{path.name} holds {len(infos)} files (max {limits.max_zip_members})")
        cap = min(limits.max_unzipped_bytes, limits.max_decode_bytes)
        total = 0
        for info in infos:
            if not _safe_member_name(info.filename):
                raise VolumeError(f"{path.name} contains an unsafe file name: {info.filename[:80]!r}")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise VolumeError(f"{path.name} contains a symbolic link: {info.filename[:80]!r}")
            if info.flag_bits & 0x1:
                raise VolumeError(f"{path.name} is encrypted")
            total += info.file_size
            if info.file_size > limits.max_zip_ratio * max(info.compress_size, 1) and info.file_size > (1 << 20):
                raise VolumeError(f"{path.name} looks like a zip bomb ({info.filename[:80]!r} expands "
                                  f"{info.file_size // max(info.compress_size, 1)}x)")
        if total > min(cap, 4 * limits.max_file_bytes):
            raise VolumeError(f"{path.name} expands to {mib(total)}, over the limit of {mib(cap)}")
        size = max(path.stat().st_size, 1)
        if total > (16 << 20) and total > limits.max_zip_total_ratio * size:
            raise VolumeError(f"{path.name} looks like a zip bomb (its {len(infos)} files expand "
                              f"{total // size}x, to {mib(total)})")
        written = 0
        for info in infos:
            if info.is_dir():
                continue
            target = dest / PurePosixPath(info.filename.replace("\\", "/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            member = 0
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(READ_CHUNK):
                        member += len(chunk)
                        written += len(chunk)
                        if member > info.file_size or written > total or written > cap:  # declared sizes lied
                            raise VolumeError(f"{path.name} expands beyond its declared size")
                        dst.write(chunk)
            except VolumeError:
                raise
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
                log.warning("zip extraction of %s failed: %s", path.name, exc)
                raise VolumeError(f"{path.name} is corrupt, truncated or uses an unsupported compression") from None
        return written
