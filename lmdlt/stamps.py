"""Params stamps: what Snakemake's metadata carries, kept beside the outputs.

Every job whose rule has settings reads, as an input, a stamp beside its first output,
``.<name>.params.json``, holding exactly its params. The stamp is rewritten (mtime now) only
when its content changes, so Snakemake's timestamp rule re-runs exactly the jobs whose settings
changed, and their consumers, also in a fresh clone over existing results (no ``.snakemake/``).

* A dry-run writes nothing into results: a changed or new stamp goes to a scratch file under
  ``.snakemake/lmdlt/params-changed/`` and that path is returned instead.
* Outputs made before stamps existed adopt a stamp dated like them (no re-run).
"""
from __future__ import annotations

import hashlib
import os
import tempfile


def write_params_stamp(outputs, text: str, dryrun: bool = False) -> str:
    """The stamp path for the job writing ``outputs`` (its first names it), written or
    refreshed when ``text`` (the job's params as stable JSON) differs from what it holds."""
    text = text + "\n"
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    first = outputs[0]
    stamp = os.path.join(os.path.dirname(first), f".{os.path.basename(first)}.params.json")
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
    adopt = missing and len(existing) == len(outputs)  # results from before stamps existed
    target = stamp
    if dryrun:
        key = hashlib.sha256(os.path.abspath(stamp).encode()).hexdigest()[:20]
        target = os.path.join(".snakemake", "lmdlt", "params-changed", f"{key}.json")
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target) or ".", prefix=".stamp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if adopt:
        t = min(existing)
        os.utime(tmp, ns=(t, t))
    os.replace(tmp, target)
    return target
