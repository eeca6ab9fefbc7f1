"""Fine-tuning a (pretrained) encoder: a learning rate of its own, frozen stages, frozen
BatchNorm statistics; the stage-1 variant's ``finetune`` settings.

Defaults are the LMD paper's stage 1: the whole network is trained, with one SGD learning rate
(peterlipan/LMD ``stage1.py``: ``torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)``
over the ImageNet ResNet-18 and its classifier; the paper, section 4: "SGD with a learning rate
of 0.01"), and BatchNorm layers keep updating their statistics (``stage1.py`` converts them to
``SyncBatchNorm`` for its 4 GPUs).

* ``encoder_lr`` (absent: the variant's ``lr``, one rate for the whole network, as LMD): the
  encoder's learning rate; ``lr`` stays the classifier's and the method's own modules'
  (projection heads, centroids). Both follow the variant's schedule (the schedule's factor
  multiplies each group's rate).
* ``frozen_stages`` (absent: -1, nothing frozen, as LMD): ``0`` freezes the stem, ``N`` the stem
  and the first N stages (the convention of mmpretrain's ``ResNet(frozen_stages=...)``): their
  parameters are not trained (``requires_grad`` off, left out of the optimiser) and their
  BatchNorm layers stay in eval mode (running statistics kept). A stage is a ResNet's
  ``layerN``, a ViT's encoder block, a ``features`` child of torchvision's ConvNeXt / EfficientNet
  / MobileNet, a group of timm's ``group_matcher(coarse=True)``, a width stage of small_resnet.
* ``freeze_bn`` (absent: false, as LMD): every BatchNorm layer of the encoder in eval mode, its
  running statistics those of the (pretrained) start; its affine weights still train
  (mmdetection's ``norm_eval``). An encoder without BatchNorm (ViT: LayerNorm) has none to
  freeze (logged).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("lmdlt.finetune")


def encoder_stages(net) -> list[list[str]]:
    spec = getattr(net.encoder, "lmdlt_spec", None)
    if spec is None or not spec.stages:
        raise ValueError(f"finetune.frozen_stages: no stage list for the encoder "
                         f"{spec.arch if spec else type(net.encoder).__name__}")
    return spec.stages


def _matches(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def apply_finetune(net, finetune: dict | None) -> dict:
    """Freeze what ``finetune`` says (in place, before the optimiser and DDP are built);
    returns a summary for the log and the checkpoint's metadata."""
    ft = finetune or {}
    frozen_stages = int(ft.get("frozen_stages", -1))
    summary = {"frozen_stages": frozen_stages, "freeze_bn": bool(ft.get("freeze_bn", False)),
               "frozen_parameters": 0}
    if frozen_stages >= 0:
        stages = encoder_stages(net)
        if frozen_stages >= len(stages):
            raise ValueError(f"finetune.frozen_stages: {frozen_stages}, but the encoder has the stem "
                             f"and {len(stages) - 1} stages (at most {len(stages) - 1})")
        prefixes = [p for stage in stages[:frozen_stages + 1] for p in stage]
        frozen = 0
        for name, q in net.encoder.named_parameters():
            if _matches(name, prefixes):
                q.requires_grad_(False)
                frozen += q.numel()
        summary["frozen_parameters"] = frozen
        # BatchNorm layers whose parameters are all frozen keep their statistics too
        net.eval_modules.extend(
            n for n, m in net.encoder.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and _matches(n, prefixes))
    if summary["freeze_bn"]:
        bns = [n for n, m in net.encoder.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            log.warning("finetune.freeze_bn: the encoder has no BatchNorm layer; nothing to freeze")
        net.eval_modules.extend(n for n in bns if n not in net.eval_modules)
    net.train(net.training)
    return summary


def param_groups(net, extra: nn.Module, lr: float, finetune: dict | None) -> list[dict]:
    """The optimiser's parameter groups: the classifier and the method's modules at ``lr``, the
    encoder's trainable parameters at ``finetune.encoder_lr`` (one group, in the network's
    order, when that is absent or equal to ``lr``); frozen parameters left out."""
    encoder_lr = (finetune or {}).get("encoder_lr")
    trainable = lambda params: [q for q in params if q.requires_grad]  # noqa: E731
    if encoder_lr is None or float(encoder_lr) == float(lr):
        return [{"params": trainable(list(net.parameters()) + list(extra.parameters())), "lr": lr}]
    encoder_ids = {id(q) for q in net.encoder.parameters()}
    head = [q for q in list(net.parameters()) + list(extra.parameters()) if id(q) not in encoder_ids]
    return [{"params": trainable(head), "lr": lr, "name": "head"},
            {"params": trainable(net.encoder.parameters()), "lr": float(encoder_lr), "name": "encoder"}]


def group_lrs(opt: torch.optim.Optimizer) -> dict[str, float]:
    return {g.get("name", "all"): g["lr"] for g in opt.param_groups}
