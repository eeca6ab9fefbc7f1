"""Every stage-1 and stage-2 method's default params against its paper / reference-code values,
one row per value with its source beside it.

Source tags: ``ref`` a reference repository (file:line), ``paper`` the paper (our copies in
the cited publication), ``design`` a fact checked against the paper and the reference code,
``departure`` a value of ours that differs from the reference (the reference value is named),
``option`` a switch of ours with no paper value (its default keeps the paper's behaviour).
Methods outside the LMD family must have a row for every param, so a new param without a source
fails here; for LMD's methods (rrl, vfc, icc: edited elsewhere) the paper values are listed."""
import pytest

from lmdlt.stage1 import available_methods as stage1_methods, get_method as get1
from lmdlt.stage2 import available_methods as stage2_methods, get_method as get2

GCL = "Keke921/GCLLoss@c2a6233"
WB = "ShadeAlsha/LTR-weight-balancing@e89f292"
LDAMREF = "kaidic/LDAM-DRW@2536330"
BS = "jiawei-ren/BalancedMetaSoftmax-Classification@34a61e4"
CB = "facebookresearch/classifier-balancing@22370c6"
CCSAM = "zzpustc/CC-SAM@651d3df"

# (stage, method, param, default, source)
TABLE = [
    # ---- stage 1 ----
    (1, "ce", "label_smoothing", 0.0, "paper: the CE baseline is plain cross-entropy"),
    (1, "rs", "gamma", 0.0, "paper: RS = class-balanced sampling (Kang et al. 2020, q = 0)"),
    (1, "focal", "gamma", 2.0, "paper: Lin et al. 2017, gamma = 2 (their best, Table 1a)"),
    (1, "ldam", "max_m", 0.5, f"ref: {LDAMREF} cifar_train.py:213 LDAMLoss(max_m=0.5)"),
    (1, "ldam", "s", 30.0, f"ref: {LDAMREF} cifar_train.py:213 LDAMLoss(s=30)"),
    (1, "ldam", "drw_start", 0.8, f"ref: {LDAMREF} cifar_train.py:201, 43 (epoch // 160 of 200)"),
    (1, "ldam", "drw_beta", 0.9999, f"ref: {LDAMREF} cifar_train.py:202 betas = [0, 0.9999]"),
    (1, "ce_drw", "drw_start", 0.8, f"ref: {LDAMREF} cifar_train.py:199-206, 210-211 (CE + DRW)"),
    (1, "ce_drw", "drw_beta", 0.9999, f"ref: {LDAMREF} cifar_train.py:202"),
    (1, "ldam", "lr_schedule", "reference", f"ref: {LDAMREF} cifar_train.py:366-376 adjust_learning_rate, scaled"),
    (1, "ce_drw", "lr_schedule", "reference", f"ref: {LDAMREF} cifar_train.py:366-376 (same script for CE)"),
    (1, "cc_sam", "flat_ratio", 0.3, f"ref: {CCSAM} configs/Cifar10.json:25 (Cifar100.json:25: 0.5)"),
    (1, "cc_sam", "noise_ratio", 1.0e-6, f"ref: {CCSAM} configs/Cifar10.json:26; train_cifar.py:166"),
    (1, "cc_sam", "mixup", True, f"ref: {CCSAM} configs/Cifar10.json:23; train_cifar.py:129-133"),
    (1, "cc_sam", "mixup_alpha", 1.0, f"ref: {CCSAM} configs/Cifar10.json:16; utils/utils.py:315-318"),
    (1, "cc_sam", "step", "reference", f"ref: {CCSAM} train_cifar.py:184-194 (one backward); two_pass an option"),
    (1, "balanced_softmax", "tau", 1.0, f"ref: {BS} loss/BalancedSoftmaxLoss.py:47-50 (logits + log n)"),
    (1, "cb_focal", "beta", 0.9999, "paper: Cui et al. 2019 (beta 0.9999 for CIFAR-LT)"),
    (1, "cb_focal", "gamma", 1.0, "paper: Cui et al. 2019 (CB focal, gamma 1.0 at r = 100)"),
    (1, "cb_focal", "prior", 0.1, "paper: Cui et al. 2019 Sec. 4 (bias init pi = 0.1)"),
    (1, "seesaw", "p", 0.8, "paper: Wang et al. 2021 Sec. 4 (p = 0.8)"),
    (1, "seesaw", "q", 2.0, "paper: Wang et al. 2021 Sec. 4 (q = 2.0)"),
    (1, "bal_mixup", "alpha", 0.1, "paper: Galdran et al. 2021 (Beta(alpha, 1), small alpha; module docstring)"),
    (1, "supcon", "tau", 0.1, "paper: Khosla et al. 2020 (tau 0.1)"),
    (1, "supcon", "dim", 128, "paper: Khosla et al. 2020 (128-d projection)"),
    (1, "supcon", "probe", True, "option: online linear probe on detached features (no paper value)"),
    (1, "cb_wd_max", "max_norm_thresh", None, f"ref: {WB} demo1_first-stage-training.py:305 (stage 1: WD only)"),
    (1, "cb_wd_max", "max_norm", None, "option: absolute per-step radius (the earlier rule), off"),
    (1, "gcl", "s", 30.0, f"ref: {GCL} cifar_train_backbone.py:238 GCLLoss(s=30)"),
    (1, "gcl", "m", 0.0, f"ref: {GCL} cifar_train_backbone.py:238 GCLLoss(m=0.)"),
    (1, "gcl", "noise_mul", 0.5, f"ref: {GCL} cifar_train_backbone.py:238 GCLLoss(noise_mul=0.5)"),
    (1, "gcl", "noise_std", 1 / 3, f"ref: {GCL} losses.py:65 normal.Normal(0, 1/3)"),
    (1, "iccl", "tau", 0.07, "paper: Tiong et al. (002) l.196 tau = 0.07"),
    (1, "iccl", "momentum", 0.99, "paper: Tiong et al. (002) l.196 m = 0.99"),
    (1, "iccl", "dim", 128, "paper: Tiong et al. (002) l.213 d_z = 128"),
    (1, "iccl", "gamma", 0.0, "paper: Tiong et al. (002) l.196 gamma = 0"),
    (1, "iccl", "uniform_weight", 1.0, "paper: Tiong et al. (002) l.196 omega_u = 1"),
    (1, "iccl", "interp_weight", 1.0, "paper: Tiong et al. (002) l.213 omega_it = 1"),
    (1, "iccl", "beta", 1.0, "design: lambda ~ U(0, 1) = Beta(1, 1)"),
    (1, "iccl", "warmup_epochs", None, "departure: half the run (paper: T = 80/100 of 200 epochs on CIFAR, l.217)"),
    (1, "aduc", "tau", 0.1, "paper: Cong et al. (001) l.95 tau = 0.1"),
    (1, "aduc", "alpha_max", 1.0, "paper: Cong et al. (001) l.95 alpha_max = 1.0"),
    (1, "aduc", "alpha_min", 0.01, "paper: Cong et al. (001) l.95 alpha_min = 0.01"),
    (1, "aduc", "t_decay", None, "departure: the last epoch (paper: t_decay = 1000 with 400 epochs, l.95)"),
    (1, "aduc", "alpha_schedule", "paper", "design §4: Eq. 3 per epoch (ref util.py:116-120 compounds it, a bug)"),
    (1, "aduc", "logit_compensation", "log_prior", "ref: thomascong121/AdUni@61d8c18 losses.py:183 + log(weight)"),
    (1, "aduc", "logit_tau", None, "paper: Cong et al. (001) Eq. 2-3 logits / tau (ref losses.py:183: supt 1.0)"),
    (1, "aduc", "dim", 128, "departure: 128-d projection (not given in the paper text)"),
    (1, "lcreg", "num_latent", 40, "paper: Liu et al. (003) l.189, 211 (40 for CIFAR-10-LT)"),
    (1, "lcreg", "lambda_0", 0.5, "paper: Liu et al. (003) l.138 follows ISDA (lambda_0 = 0.5)"),
    (1, "lcreg", "w_aug", 0.1, "paper: Liu et al. (003) Eq. 10"),
    (1, "lcreg", "w_recon", 0.1, "paper: Liu et al. (003) Eq. 10"),
    (1, "lcreg", "w_cls", 1.0, "paper: Liu et al. (003) Eq. 10"),
    (1, "rrl", "lambda_1", 10.0, "paper/design §4: lambda_1 = 10"),
    (1, "rrl", "prob_weight", 0.5, "paper/design §4: 0.5 on L_prob"),
    (1, "rrl", "ema_decay", 0.999, "design §4: teacher EMA decay min(1 - 1/(step+1), 0.999)"),
    (1, "rrl", "consistency_start_epoch", 21, "design §4: consistency terms after epoch 20"),
    # ---- stage 2 ----
    (2, "gcl", "s", 20.0, f"ref: {GCL} cifar_train_classifier.py:221 GCLLoss(s=20)"),
    (2, "gcl", "m", 0.1, f"ref: {GCL} cifar_train_classifier.py:221 GCLLoss(m=0.1)"),
    (2, "gcl", "noise_mul", 0.5, f"ref: {GCL} cifar_train_classifier.py:222 noise_mul=0.5"),
    (2, "gcl", "noise_std", 1 / 3, f"ref: {GCL} losses.py:65"),
    (2, "gcl", "gamma", 1.0, f"ref: {GCL} cifar_train_classifier.py:222 train_cls=True, gamma=1."),
    (2, "gcl", "sampler", "class_balanced", f"ref: {GCL} cifar_train_classifier.py:37, 171-173 BalancedRS"),
    (2, "gcl", "epochs", 30, f"ref: {GCL} cifar_train_classifier.py:43"),
    (2, "gcl", "batch_size", 64, f"ref: {GCL} cifar_train_classifier.py:48"),
    (2, "gcl", "lr", 0.002, f"ref: {GCL} cifar_train_classifier.py:51, 466-476 (0.1 x 0.1 x 0.1 x 2 at epoch 0)"),
    (2, "gcl", "momentum", 0.9, f"ref: {GCL} cifar_train_classifier.py:53"),
    (2, "gcl", "weight_decay", 2e-4, f"ref: {GCL} cifar_train_classifier.py:55"),
    (2, "cb_wd_max", "loss", "cb_softmax_bce", f"ref: {WB} demo2_second-stage-training.py:339-340; utils/class_balanced_loss.py:92-94"),
    (2, "cb_wd_max", "beta", 0.9999, f"ref: {WB} demo2_second-stage-training.py:340"),
    (2, "cb_wd_max", "max_norm_thresh", 0.1, f"ref: {WB} demo2_second-stage-training.py:316; utils/regularizers.py:27"),
    (2, "cb_wd_max", "max_norm", None, "option: absolute radius (the earlier rule, was 1.0), off"),
    (2, "cb_wd_max", "project", "epoch", f"ref: {WB} utils/trainval.py:140-142 (PGD after each training epoch)"),
    (2, "cb_wd_max", "weight_decay", 0.1, f"ref: {WB} demo2_second-stage-training.py:337"),
    (2, "cb_wd_max", "lr", 0.01, f"ref: {WB} demo2_second-stage-training.py:335"),
    (2, "cb_wd_max", "epochs", 10, f"ref: {WB} demo2_second-stage-training.py:336"),
    (2, "cb_wd_max", "batch_size", 64, f"ref: {WB} demo2_second-stage-training.py:92"),
    (2, "cb_wd_max", "momentum", 0.9, f"ref: {WB} demo2_second-stage-training.py:346"),
    (2, "cb_wd_max", "sampler", "instance", f"ref: {WB} demo2_second-stage-training.py:160-164 (shuffle)"),
    (2, "logit_adjust", "tau_min", 0.0, "paper: Menon et al. 2021 tune tau; grid [0, 2] holds the reference's 1.0"),
    (2, "logit_adjust", "tau_max", 2.0, "ref: google-research logit_adjustment/main.py:42 tau default 1.0 inside the grid"),
    (2, "logit_adjust", "tau_step", 0.1, "option: grid step (as tau_norm's)"),
    (2, "crt", "epochs", 10, f"ref: {CB} config/ImageNet_LT/cls_crt.yaml num_epochs: 10"),
    (2, "crt", "momentum", 0.9, f"ref: {CB} config/ImageNet_LT/cls_crt.yaml"),
    (2, "crt", "weight_decay", 5e-4, f"ref: {CB} config/ImageNet_LT/cls_crt.yaml"),
    (2, "crt", "sampler", "class_balanced", f"ref: {CB} cls_crt.yaml ClassAwareSampler (class-balanced)"),
    (2, "crt", "batch_size", 128, f"departure: reference batch 512 ({CB} cls_crt.yaml)"),
    (2, "crt", "lr", 0.1, f"departure: reference lr 0.2 at batch 512 ({CB} cls_crt.yaml)"),
    (2, "lws", "sampler", "class_balanced", f"ref: {CB} config/ImageNet_LT/cls_lws.yaml ClassAwareSampler"),
    (2, "lws", "momentum", 0.9, f"ref: {CB} cls_lws.yaml"),
    (2, "lws", "epochs", 10, f"departure: reference 5 epochs ({CB} cls_lws.yaml)"),
    (2, "lws", "weight_decay", 0.0, f"departure: reference 5e-4 ({CB} cls_lws.yaml)"),
    (2, "lws", "batch_size", 128, f"departure: reference batch 512 ({CB} cls_lws.yaml)"),
    (2, "lws", "lr", 0.1, f"departure: reference lr 0.2 at batch 512 ({CB} cls_lws.yaml)"),
    (2, "tau_norm", "tau_min", 0.0, "design §4: tau swept over [0, 2]"),
    (2, "tau_norm", "tau_max", 2.0, "design §4: tau swept over [0, 2]"),
    (2, "tau_norm", "tau_step", 0.1, "option: grid step"),
    (2, "ncm", "metric", "cosine", "design §4: centred, L2-normalised, nearest centroid"),
    (2, "kd_rebalance", "gamma", 1.0, "paper: Tiong et al. (002) l.196 gamma' = 1"),
    (2, "kd_rebalance", "w_d", 0.5, "paper: Tiong et al. (002) l.196 omega_d = 0.5"),
    (2, "kd_rebalance", "tau_d", 10.0, "paper: Tiong et al. (002) l.196 tau_d = 10"),
    (2, "kd_rebalance", "epochs", 10, "paper: Tiong et al. (002) l.213 10 epochs"),
    (2, "kd_rebalance", "sampler", "class_aware", "paper: Tiong et al. (002) Eq. 2 with gamma'"),
    (2, "kd_rebalance", "init", "stage1", "option: start from the stage-1 classifier"),
    (2, "kd_rebalance", "lr", 0.01, "paper: Tiong et al. (002) l.213 stage-1 lr x 0.1"),
    (2, "kd_rebalance", "momentum", 0.9, "paper: Tiong et al. (002) l.196 SGD momentum 0.9"),
    (2, "kd_rebalance", "batch_size", 128, "departure: the stage-1 batch of the paper's CIFAR setting (l.217)"),
    (2, "kd_rebalance", "weight_decay", 5e-4, "departure: shared linear default (paper: not stated for stage 2)"),
    (2, "vfc", "virtual_per_class", 50000, "paper/design §4: R = 50,000"),
    (2, "vfc", "cov_reg", 0.01, "design §4: covariance + 1e-2 I"),
    (2, "vfc", "m_lr", 1e-5, "paper/design §4: M-step lr 1e-5"),
    (2, "vfc", "m_batch_size", 352, "design §4: batch 352"),
    (2, "icc", "iterations", 200, "design §4: 200 iterations"),
    (2, "icc", "lambda_e", 1e-4, "paper/design §4: lambda_e = 1e-4"),
    (2, "icc", "m_lr", 1e-5, "paper/design §4: M-step lr 1e-5"),
    (2, "icc", "e_lr", 1e-6, "paper/design §4: E-step lr 1e-6"),
    (2, "icc", "gce_q", 0.7, "design §4: generalised CE q = 0.7 (reference-code option)"),
    (2, "icc", "virtual_per_class", 50000, "paper/design §4: R = 50,000"),
    (2, "icc", "cov_reg", 0.01, "design §4: covariance + 1e-2 I"),
]
LMD = {"rrl", "vfc", "icc"}
ALL = [(1, m) for m in stage1_methods()] + [(2, m) for m in stage2_methods()]


def defaults(stage, name):
    cls = (get1 if stage == 1 else get2)(name)
    return {k: v.get("default") for k, v in cls.params.items()}


@pytest.mark.parametrize("stage,name,param,value,source", TABLE,
                         ids=[f"s{r[0]}-{r[1]}-{r[2]}" for r in TABLE])
def test_default_equals_its_source(stage, name, param, value, source):
    got = defaults(stage, name)
    assert param in got, f"{name} has no param {param!r} ({source})"
    if isinstance(value, float):
        assert got[param] == pytest.approx(value, rel=1e-12), source
    else:
        assert got[param] == value, source


@pytest.mark.parametrize("stage,name", ALL, ids=[f"s{s}-{n}" for s, n in ALL])
def test_every_method_has_its_defaults_in_the_table(stage, name):
    listed = {r[2] for r in TABLE if r[:2] == (stage, name)}
    assert listed, f"stage-{stage} method {name!r} has no row in the defaults table"
    if name not in LMD:
        missing = set(defaults(stage, name)) - listed
        assert not missing, f"{name}: params without a source row: {sorted(missing)}"


def test_every_row_names_a_source():
    for row in TABLE:
        tag = row[4].split(":")[0].split()[0].split("/")[0]
        assert tag in {"ref", "paper", "design", "departure", "option"}, row
