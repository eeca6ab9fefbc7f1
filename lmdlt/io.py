"""Artefact I/O shared by every stage: atomic writes, content hashes, provenance records.

Every artefact the pipeline writes carries a provenance record (stage, the stage's own
config, the hashes of its parent artefacts, seed, code version) and is written under a
temporary name in the same folder and renamed into place, so an interrupted job never leaves a
file that looks complete. A write that fails for want of space or permission is a
``WriteError`` naming the file and the cause (``atomic_path``).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import WriteError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path``
    is left untouched, so no half-written artefact remains. A write that fails for want of
    space, quota or permission (``write_failure``) becomes one ``WriteError`` naming ``path``
    and the cause; any other error passes through unchanged.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        mapped = write_failure(final, e, final.parent)
        if mapped is None:
            raise
        raise mapped from e
    _remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    except (OSError, RuntimeError) as e:
        # looked at before the temporary goes: the free space the writer saw
        mapped = write_failure(final, e, tmp)
        if mapped is None:
            raise
        raise mapped from e
    finally:
        if tmp.exists():
            tmp.unlink()


#: errnos of a write that failed for a reason outside the program (space, quota, permission)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG, errno.EIO}
#: free space below which a failed write is put down to a full disk: torch.save reports one
#: only as "[enforce fail at inline_container.cc:...] unexpected pos ...", without errno
LOW_SPACE = 1 << 20
_HINTS = {
    errno.ENOSPC: "free some space or move results_dir to a larger disk, then re-run",
    errno.EDQUOT: "free some space within your quota or move results_dir, then re-run",
    errno.EACCES: "check that you may write to that folder",
    errno.EPERM: "check that you may write to that folder",
    errno.EROFS: "move results_dir to a writable disk",
}


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def write_failure(final: Path, error: BaseException, written: Path) -> WriteError | None:
    """``error``, raised while writing ``final`` (through the temporary or folder ``written``),
    as a one-line ``WriteError`` naming ``final`` and the cause: the error's errno when it is
    one of ``WRITE_ERRNOS`` (h5py puts it in its message), else "no space left on device" when
    the file system has less than ``LOW_SPACE`` free and the error is an ``OSError`` or torch's
    stream writer failing. None for anything else, and for an error about another file (its
    own message names that file)."""
    name = getattr(error, "filename", None) if isinstance(error, OSError) else None
    if name is not None and Path(os.fsdecode(name)) not in (final, written, *final.parents):
        return None
    code = getattr(error, "errno", None) if isinstance(error, OSError) else None
    if code not in WRITE_ERRNOS:
        found = re.search(r"\berrno = (\d+)", str(error))
        code = int(found.group(1)) if found else None
    free = _free_bytes(final.parent)
    torch_writer = isinstance(error, RuntimeError) and re.search(
        r"inline_container|PytorchStreamWriter|file write failed", str(error)) is not None
    if code not in WRITE_ERRNOS:
        if not (isinstance(error, OSError) or torch_writer):
            return None
        if free is not None and free < LOW_SPACE:
            code = errno.ENOSPC
        elif torch_writer:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            return WriteError(f"cannot write {str(final)!r}: the write failed ({first})")
        else:
            return None
    cause = os.strerror(code).lower()
    space = f", {_size(free)} free there" if free is not None and code in (errno.ENOSPC, errno.EDQUOT) else ""
    hint = f"; {_HINTS[code]}" if code in _HINTS else ""
    target = f"the folder {str(final.parent)!r} for {final.name!r}" if written == final.parent else repr(str(final))
    return WriteError(f"cannot write {target}: {cause}{space}{hint}", code)


def _remove_stale_temporaries(final: Path) -> None:
    """Temporaries of writers that were killed (SIGKILL skips cleanup) and are gone now."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            stale.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    from .status import process_alive  # stdlib only; lazy, as io is imported everywhere

    return process_alive(pid)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON artefact; a truncated or corrupt one is an ``ArtefactError`` naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise unreadable(path, "JSON file", e) from None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()


def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    try:
        root = Path(__file__).resolve().parent.parent
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "lmdlt"],
            capture_output=True, text=True, timeout=5,
        )
        if rev.returncode == 0:
            suffix = "+dirty" if dirty.stdout.strip() else ""
            return f"{__version__}+g{rev.stdout.strip()}{suffix}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def provenance(stage: str, config: Any, parents: dict[str, str] | None = None,
               seed: int | None = None) -> dict[str, Any]:
    """The record every artefact carries."""
    return {
        "stage": stage,
        "config": config,
        "config_hash": sha256_json(config),
        "parents": dict(parents or {}),
        "seed": seed,
        "code_version": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


class ArtefactError(ValueError):
    """An artefact that exists but cannot be read (truncated, corrupt, not what it should be)."""


# which rule writes which artefact (workflow/rules/*.smk), for the rebuild hint
_PRODUCERS = {
    "model.pt": "train_stage1",
    "features.h5": "extract_features",
    "predictions.h5": "train_stage2 or train_stage2_encoder",
    "metrics.json": "extract_features, train_stage2 or train_stage2_encoder",
    "split.parquet": "split",
}


def rebuild_hint(path: str | os.PathLike) -> str:
    """How to rebuild an unreadable artefact: delete it, or force its producer on that file."""
    name = Path(path).name
    rule = _PRODUCERS.get(name, "image_cache" if name.startswith("images_") and name.endswith(".h5")
                          else None)
    by = f" (rule {rule})" if rule else ""
    return (f"delete it and re-run snakemake, which rebuilds it{by} and what depends on it, or run "
            f"`snakemake --forcerun {shlex.quote(str(path))}`")


def unreadable(path: str | os.PathLike, what: str, error: BaseException) -> ArtefactError:
    """The error for an artefact that exists but does not read: names the file and the fix."""
    detail = str(error).splitlines()[0] if str(error) else ""
    return ArtefactError(f"{what} {str(path)!r} is truncated or corrupt ({type(error).__name__}: "
                         f"{detail}); {rebuild_hint(path)}")


@contextlib.contextmanager
def open_h5(path: str | os.PathLike, what: str = "HDF5 artefact"):
    """``h5py.File(path, "r")`` whose read errors (a truncated or corrupt file: at open, or in a
    dataset read inside the block) are an ``ArtefactError`` naming the file and how to rebuild
    it. A missing file stays ``FileNotFoundError``."""
    import h5py

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise unreadable(path, what, e) from None
    try:
        with f:
            yield f
    except FileNotFoundError:
        raise
    except OSError as e:  # h5py raises OSError for unreadable chunks or metadata
        raise unreadable(path, what, e) from None


class ProvenanceError(ValueError):
    """An artefact made for another config than the one its consumer is run for."""


def check_config_hash(artefact: str | os.PathLike, recorded: dict[str, Any], expected_config: Any,
                      consumer: str | os.PathLike, what: str) -> None:
    """The loop closed: ``recorded`` (the producer's provenance in ``artefact``) must carry the
    config hash of ``expected_config`` (the config ``consumer`` is being made for, hashed as
    ``provenance()`` does); otherwise a ``ProvenanceError`` naming both files and both hashes."""
    want = sha256_json(expected_config)
    got = recorded.get("config_hash")
    if got != want:
        rec = recorded.get("config") or {}
        about = ", ".join(f"{k} {rec[k]!r}" for k in ("method", "model") if k in rec)
        raise ProvenanceError(
            f"{artefact} was made for another {what} config (config_hash {got}"
            f"{'; ' + about if about else ''}) than {consumer} is being made for (config_hash "
            f"{want}); {rebuild_hint(artefact)}")


def h5_write_provenance(h5obj, prov: dict[str, Any]) -> None:
    """HDF5 attributes hold the provenance as one JSON string (plain data, safe to load)."""
    h5obj.attrs["provenance"] = json.dumps(prov, sort_keys=True, default=_json_default)


def h5_read_provenance(h5obj) -> dict[str, Any]:
    raw = h5obj.attrs.get("provenance")
    if raw is None:
        raise ValueError(f"{h5obj.file.filename}: no provenance attribute; not an lmdlt artefact")
    return json.loads(raw)
