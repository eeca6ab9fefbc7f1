"""Stamps: what Snakemake's metadata carries, kept beside the outputs.

Every job whose rule has settings reads, as an input, a stamp beside its first output,
``.<name>.params.json``, holding exactly its params. The stamp is rewritten (mtime now) only
when its content changes, so Snakemake's timestamp rule re-runs exactly the jobs whose settings
changed, and their consumers, also in a fresh clone over existing results (no ``.snakemake/``).
The jobs that read the images (the image cache, the split) read a second one,
``.<name>.data.json``, holding the data fingerprint (lmdlt.data.fingerprint): a change of the
data re-runs them and everything below them in the same way.

* A dry-run writes nothing into results: a changed or new stamp goes to a scratch file under
  ``.snakemake/lmdlt/params-changed/`` and that path is returned instead.
* Outputs made before stamps existed adopt a stamp dated like them (no re-run), unless
  ``adopt`` says no (a data stamp: not when the output records another fingerprint).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Callable


def stamp_path(outputs, kind: str = "params") -> str:
    """``.<first output's name>.<kind>.json`` beside the first output."""
    first = outputs if isinstance(outputs, str) else list(outputs)[0]
    return os.path.join(os.path.dirname(first), f".{os.path.basename(first)}.{kind}.json")


def stamp_is_newer(output: str, kind: str) -> bool:
    """True when ``output``'s stamp of ``kind`` is newer than it (the job will re-run)."""
    try:
        return os.stat(stamp_path(output, kind)).st_mtime_ns > os.stat(output).st_mtime_ns
    except FileNotFoundError:
        return False


def write_params_stamp(outputs, text: str, dryrun: bool = False) -> str:
    """The stamp path for the job writing ``outputs`` (its first names it), written or
    refreshed when ``text`` (the job's params as stable JSON) differs from what it holds."""
    return write_stamp(outputs, text, "params", dryrun)


def write_stamp(outputs, text: str, kind: str = "params", dryrun: bool = False,
                adopt: Callable[[list[str]], bool] | None = None) -> str:
    """The ``kind`` stamp of the job writing ``outputs``, written or refreshed when ``text``
    differs from what it holds. A missing stamp of outputs that all exist is dated like them
    (no re-run) when ``adopt(outputs)`` is true (default: always)."""
    text = text + "\n"
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    stamp = stamp_path(outputs, kind)
    try:
        with open(stamp) as f:
            if f.read() == text:
                return stamp
        missing = False
    except FileNotFoundError:
        missing = True
    except OSError:
        missing = False
    existing = [os.stat(o).st_mtime_ns for o in outputs if os.path.exists(o)]
    # results from before stamps existed
    adopted = missing and len(existing) == len(outputs) and (adopt is None or adopt(outputs))
    target = stamp
    if dryrun:
        key = hashlib.sha256(os.path.abspath(stamp).encode()).hexdigest()[:20]
        target = os.path.join(".snakemake", "lmdlt", "params-changed", f"{key}.json")
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target) or ".", prefix=".stamp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if adopted:
        t = min(existing)
        os.utime(tmp, ns=(t, t))
    os.replace(tmp, target)
    return target
