"""Pieces shared by several stage-1 methods: class weights, cosine classifiers, projection
heads, image interpolation and the supervised contrastive loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.samplers import effective_number_weights  # noqa: F401  (re-exported)


class DeviceConstants:
    """A method's constant tensors (class weights, margins, log priors...) kept on the host
    and cached per (device, dtype) at first use: moved to the GPU once, not uploaded (a
    synchronous copy from pageable memory) at every step."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        self._host = tensors
        self._cache: dict = {}

    def __call__(self, name: str, device, dtype: torch.dtype | None = None) -> torch.Tensor:
        key = (name, torch.device(device), dtype)
        t = self._cache.get(key)
        if t is None:
            t = self._cache[key] = self._host[name].to(device=device, dtype=dtype)
        return t


def cosine_logits(net, x) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine similarities (B, K) between features and classifier rows, features)."""
    feats = net.features(x)
    w = net.classifier.weight
    return F.normalize(feats, dim=1) @ F.normalize(w, dim=1).t(), feats


@torch.no_grad()
def project_to_cosine_classifier(classifier: nn.Linear) -> None:
    """Unit-norm rows and zero bias: the network's plain logits ``W f + b`` then equal
    ``||f|| * cos(f, w_k)``, whose arg-max is that of the cosine classifier a margin loss
    (LDAM, GCL) trains. Applied at the start and after every optimiser step."""
    classifier.weight.copy_(F.normalize(classifier.weight, dim=1))
    if classifier.bias is not None:
        classifier.bias.zero_()


class ProjectionHead(nn.Module):
    """SimCLR-style MLP (one hidden layer of the input width, ReLU) to L2-normalised embeddings."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True),
                                 nn.Linear(in_dim, out_dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(feats), dim=1)


def mix_images(x1: torch.Tensor, x2: torch.Tensor, lam) -> torch.Tensor:
    """``lam * x1 + (1 - lam) * x2`` on the pixel scale (float), before normalisation; the
    network's Normalize is affine, so this equals mixing normalised images."""
    lam = torch.as_tensor(lam, dtype=torch.float32, device=x1.device)
    if lam.dim() == 1:
        lam = lam.view(-1, *([1] * (x1.dim() - 1)))
    return lam * x1.float() + (1 - lam) * x2.float()


def soft_cross_entropy(logits: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor, lam) -> torch.Tensor:
    """Mean over the batch of ``lam * CE(y1) + (1 - lam) * CE(y2)`` (lam scalar or per sample)."""
    logp = F.log_softmax(logits, dim=1)
    lam = torch.as_tensor(lam, dtype=logits.dtype, device=logits.device)
    nll1 = -logp.gather(1, y1[:, None]).squeeze(1)
    nll2 = -logp.gather(1, y2[:, None]).squeeze(1)
    return (lam * nll1 + (1 - lam) * nll2).mean()


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out): for every anchor i among the
    n embeddings ``z`` (L2-normalised), -1/|P(i)| sum_{p in P(i)} log softmax_{a != i}(z_i.z_a/tau)_p,
    averaged over the anchors that have a positive."""
    n = z.shape[0]
    sim = z @ z.t() / tau
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not has.any():
        return z.sum() * 0.0
    mean_log_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[has] / n_pos[has]
    return -mean_log_pos.mean()


class TwoViewTransform:
    """A per-sample transform returning two independently augmented views. A module-level
    class, not a closure, so that it pickles into DataLoader workers started with spawn or
    forkserver (macOS, Windows, Python 3.14's default on Linux)."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)

    def __repr__(self) -> str:
        return f"TwoViewTransform({self.transform!r})"


def two_views(transform) -> TwoViewTransform:
    return TwoViewTransform(transform)


class TwoViewContrastive:
    """Mixin for contrastive methods: two augmented views per image and a projection head of
    ``params["dim"]`` outputs, trained with the network."""

    def train_transform(self, augment, size):
        from ..data.transforms import train_transform

        return two_views(train_transform(augment, size))

    def on_train_start(self, net, epochs, steps_per_epoch):
        super().on_train_start(net, epochs, steps_per_epoch)
        self.head = ProjectionHead(net.feature_dim, self.p["dim"])

    def modules(self):
        return nn.ModuleDict({"head": self.head})


class CosineClassifier:
    """Mixin for margin losses on a cosine classifier: the network's linear layer is kept at
    unit-norm rows and zero bias from the start and after every step. The bias never enters
    the loss, so DDP must be told that a step leaves a parameter without a gradient."""

    ddp_unused_parameters = True

    def on_train_start(self, net, epochs, steps_per_epoch):
        super().on_train_start(net, epochs, steps_per_epoch)
        project_to_cosine_classifier(net.classifier)

    def after_step(self, net):
        project_to_cosine_classifier(net.classifier)
