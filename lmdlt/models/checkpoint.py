"""Loading a stage-1 checkpoint: tensors and plain metadata only, read with weights_only=True.

Kept apart from the trainer so that the consumers (feature extraction, encoder fine-tuning)
start without the training stack's imports (torchvision, scikit-learn).

Results folders are shared between users on clusters: a checkpoint that carries any pickled
object other than tensors and plain data is refused (``CheckpointError`` naming the file and
the object), never loaded, since unpickling it could run code.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from ..io import rebuild_hint
from .network import build_network


class CheckpointError(ValueError):
    """A checkpoint that is unsafe or not an lmdlt stage-1 checkpoint."""


def safe_torch_load(path, device="cpu", what: str = "checkpoint"):
    """``torch.load(weights_only=True)`` with errors that name the file and never suggest
    turning the weights-only mode off."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        m = re.search(r"GLOBAL (\S+)", text)
        if m:
            raise CheckpointError(
                f"refusing to load {what} {str(path)!r}: it carries a pickled {m.group(1)}, not "
                "only tensors and plain data; loading it could run code (only load checkpoints "
                "written by lmdlt, or rebuild it)") from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        raise CheckpointError(f"{what} {str(path)!r} is not a readable torch file of tensors and plain "
                              f"data ({detail.group(1).strip() if detail else type(e).__name__}); "
                              f"{rebuild_hint(path)}") from None
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # a truncated or corrupt file
        raise CheckpointError(f"{what} {str(path)!r} is not a readable torch file, truncated or corrupt "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                              f"{rebuild_hint(path)}") from None


def load_checkpoint(path, device="cpu"):
    """(network, meta) from a stage-1 checkpoint, loaded with weights_only=True."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"stage-1 checkpoint {str(p)!r} not found")
    ckpt = safe_torch_load(p, device, "stage-1 checkpoint")
    if not isinstance(ckpt, dict) or not {"state_dict", "meta"} <= set(ckpt):
        raise CheckpointError(f"{str(p)!r} is not an lmdlt stage-1 checkpoint "
                              "(no 'state_dict' and 'meta')")
    meta = ckpt["meta"]
    # the recorded (mean, std) are the ones trained with (the weights' own when pretrained);
    # load_weights=False: the same modules as at training, no pretrained weights read
    net = build_network(meta["model"], meta["in_channels"], meta["num_classes"], meta["mean"],
                        meta["std"], image_size=meta.get("image_size"), load_weights=False)
    net.load_state_dict(ckpt["state_dict"])
    return net.to(device), meta
