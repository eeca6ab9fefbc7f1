"""The mutation check: apply one behavioural edit at a time to a copy of the tree and run the
fast tier of the tests that should notice it (``pytest -m "not slow"`` on the group's test
files). A mutant that leaves them green "survives": a behaviour no fast test pins.

    python scripts/mutation_check.py                    # every group
    python scripts/mutation_check.py --group metrics    # one group (repeatable)
    python scripts/mutation_check.py --list             # the mutants, without running them
    python scripts/mutation_check.py --check            # every snippet still found exactly once
    python scripts/mutation_check.py --uncommitted      # mutate HEAD plus the uncommitted edits

Groups: ``lmd`` and ``baselines`` (one-line edits of the methods), ``metrics`` (the scores),
``splits`` (the split protocols, the long-tail profiles, the manifest hash and the leak report),
``stamps`` (params and data stamps, the data fingerprint), ``provenance`` (config hashes,
parent hashes, the leak guards before scoring, safe loading, atomic writes), ``options`` (every
method option: enum, boolean, nullable, string or list params) and ``params`` (every other
method param). ``options`` and ``params`` are generated from the registries: each mutant makes
one method ignore one param (its class is wrapped so that the param is always its default,
whatever the config says: an option silently ignored), so every option must change a fast
test's outcome when set.

A hand-written mutant is (file, original snippet, mutated snippet, what it breaks); the original
must occur exactly once (``--check``; a snippet the code moved away from is reported STALE). The
tree is copied with ``git worktree`` into a temporary folder, so the working copy is never
touched; the tests run with that copy first on ``sys.path``. Slow (5-60 s per mutant on 2
cores): not in CI. Results and the argued-equivalent survivors: docs/mutation.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST_TIER = ["-m", "not slow"]

LMD_TESTS = ["tests/test_lmd_behaviour.py", "tests/test_lmd.py", "tests/test_vfc.py"]

BASELINE_TESTS = ["tests/test_method_defaults.py", "tests/test_baselines_reference.py",
                  "tests/test_stage2_methods.py", "tests/test_stage1_losses.py",
                  "tests/test_reference_schedules.py", "tests/test_method_pins.py",
                  "tests/test_stage2_contract.py"]

# every test file of the methods (the options and params groups: a param of any method)
# test_method_options first: it is the one that runs each method with each value of each param
METHOD_TESTS = ["tests/test_method_options.py", *BASELINE_TESTS, *LMD_TESTS, "tests/test_cc_sam.py",
                "tests/test_samplers.py"]

METRICS_TESTS = ["tests/test_metrics.py", "tests/test_report.py"]
SPLITS_TESTS = ["tests/test_splits.py", "tests/test_longtail.py", "tests/test_sources.py",
                "tests/test_sources_contract.py"]
STAMPS_TESTS = ["tests/test_stamps.py", "tests/test_data_fingerprint.py"]
PROVENANCE_TESTS = ["tests/test_io.py", "tests/test_safe_loading.py", "tests/test_metrics.py",
                    "tests/test_stage2_guards.py", "tests/test_image_cache.py", "tests/test_sources_files.py",
                    "tests/test_data_fingerprint.py", "tests/test_errors.py"]

# the baselines: every stage-1/stage-2 module but LMD's (rrl, icc, vfc, gaussian)
BASELINE_MUTANTS = [
    ("lmdlt/stage1/focal.py", "return (-(1 - logp_t.exp()) ** gamma * logp_t).mean()",
     "return (-logp_t).mean()", "focal gamma ignored (plain CE)"),
    ("lmdlt/stage1/focal.py", '"gamma": {"type": "number", "minimum": 0, "default": 2.0,',
     '"gamma": {"type": "number", "minimum": 0, "default": 1.0,', "focal gamma default 1"),
    ("lmdlt/stage1/cb_focal.py", "return (weights.to(logits.device)[y] * per_class.sum(1)).mean()",
     "return per_class.sum(1).mean()", "CB-Focal class weights dropped"),
    ("lmdlt/stage1/cb_focal.py", "zt = torch.where(onehot, logits, -logits)", "zt = logits",
     "CB-Focal sigmoid target sign ignored for the negatives"),
    ("lmdlt/stage1/cb_focal.py", 'bias.fill_(-math.log(', 'bias.fill_(math.log(',
     "CB-Focal prior bias sign flipped"),
    ("lmdlt/stage1/cb_focal.py", '"gamma": {"type": "number", "minimum": 0, "default": 1.0,',
     '"gamma": {"type": "number", "minimum": 0, "default": 2.0,', "CB-Focal gamma default 2"),
    ("lmdlt/stage1/seesaw.py",
     '        self.cum_counts += all_reduce_sum(batch)\n'
     '        return {"seesaw": seesaw_loss(net(x), y, self.cum_counts.float(), self.p["p"], self.p["q"])}',
     '        out = {"seesaw": seesaw_loss(net(x), y, self.cum_counts.float(), self.p["p"], self.p["q"])}\n'
     '        self.cum_counts += all_reduce_sum(batch)\n'
     '        return out', "Seesaw counts updated after the loss"),
    ("lmdlt/stage1/seesaw.py", "probs = F.softmax(logits.detach(), dim=1)", "probs = F.softmax(logits, dim=1)",
     "Seesaw compensation factor not detached"),
    ("lmdlt/stage1/seesaw.py", "ratio = n[None, :] / n[:, None]", "ratio = n[:, None] / n[None, :]",
     "Seesaw mitigation ratio inverted"),
    ("lmdlt/stage1/seesaw.py", "adjusted = logits + s.log() * (1 - onehot)", "adjusted = logits + s.log()",
     "Seesaw factor applied to the target logit too"),
    ("lmdlt/stage1/seesaw.py", '"p": {"type": "number", "minimum": 0, "default": 0.8,',
     '"p": {"type": "number", "minimum": 0, "default": 0.0,', "Seesaw p default 0"),
    ("lmdlt/stage1/rs.py", 'return {"name": "class_balanced"}', "return None", "RS sampler dropped"),
    ("lmdlt/stage1/ldam.py", "out = cos - onehot * margins", "out = cos + onehot * margins",
     "LDAM margin sign flipped"),
    ("lmdlt/stage1/ldam.py", "m = 1.0 / n ** 0.25", "m = 1.0 / n ** 0.5", "LDAM margins n^-1/2"),
    ("lmdlt/stage1/ldam.py", "if start is None or epoch < start:", "if start is None or epoch <= start:",
     "DRW one epoch late"),
    ("lmdlt/stage1/ldam.py", "        return epoch >= start\n", "        return True\n",
     "best_val may keep a pre-DRW epoch"),
    ("lmdlt/stage1/ldam.py", 'if self.p["lr_schedule"] == "trainer":', "if True:",
     "LDAM-DRW reference schedule ignored (shared cosine)"),
    ("lmdlt/stage1/ldam.py", "return (warm + 1) / REF_WARMUP", "return 1.0", "LDAM-DRW without warm-up"),
    ("lmdlt/stage1/ldam.py", '"max_m": {"type": "number", "exclusiveMinimum": 0, "default": 0.5,',
     '"max_m": {"type": "number", "exclusiveMinimum": 0, "default": 0.3,', "LDAM max_m default 0.3"),
    ("lmdlt/stage1/ce_drw.py", "weight=self.drw_weight(epoch, y.device))", "weight=None)",
     "CE-DRW class weights dropped"),
    ("lmdlt/stage1/aduc.py", 'self.alpha(epoch), self.p["tau"]', 'self.p["alpha_max"], self.p["tau"]',
     "AdUni alpha constant"),
    ("lmdlt/stage1/aduc.py", "        logits = logits + compensation.to(device=g.device, dtype=g.dtype)[None, :]\n",
     "        pass\n", "AdUni log-prior compensation dropped"),
    ("lmdlt/stage1/aduc.py", "feat_term = (sim.masked_fill(~pos, 0.0) - log_d[:, None] * pos).sum(1)",
     "feat_term = sim.masked_fill(~pos, 0.0).sum(1)", "AdUni feature positives without the shared denominator"),
    ("lmdlt/stage1/aduc.py", "omega = 0.5 * (1 + math.cos(math.pi * t / t_decay))",
     "omega = 1 + math.cos(math.pi * t / t_decay)", "AdUni omega not halved (printed formula)"),
    ("lmdlt/stage1/balanced_softmax.py", "logits + tau * log_n[None, :]", "logits - tau * log_n[None, :]",
     "Balanced Softmax shift sign flipped"),
    ("lmdlt/stage1/gcl.py", "eps.to(cos.device, cos.dtype).abs()", "eps.to(cos.device, cos.dtype)",
     "GCL noise not |eps|"),
    ("lmdlt/stage1/gcl.py", "a = torch.log(n).max() - torch.log(n)", "a = torch.log(n) - torch.log(n).min()",
     "GCL cloud largest on the head classes"),
    ("lmdlt/stage1/gcl.py", "ce = (1 - torch.exp(-ce).detach()) ** gamma * ce",
     "ce = (1 - torch.exp(-ce)) ** gamma * ce", "GCL stage-2 focal factor not detached"),
    ("lmdlt/stage1/common.py", "    classifier.weight.copy_(F.normalize(classifier.weight, dim=1))\n",
     "    pass\n", "cosine classifier rows not normalised"),
    ("lmdlt/stage1/common.py", "    def after_step(self, net):\n        project_to_cosine_classifier(net.classifier)",
     "    def after_step(self, net):\n        pass", "cosine classifier not kept normalised after steps"),
    ("lmdlt/stage1/common.py", "mean_log_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[has] / n_pos[has]",
     "mean_log_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[has]", "SupCon not averaged over the positives"),
    ("lmdlt/stage1/iccl.py", "        ema_update_centroids(self.centroids, z_h.detach(), y, self.p[\"momentum\"])",
     "        if warm:\n            ema_update_centroids(self.centroids, z_h.detach(), y, self.p[\"momentum\"])",
     "ICCL centroids not moving after warm-up"),
    ("lmdlt/stage1/iccl.py", 'return {"name": "class_aware", "gamma": self.p["gamma"]}',
     'return {"name": "class_aware", "gamma": 0.0}', "ICCL sampler gamma ignored"),
    ("lmdlt/stage1/iccl.py", "return self.epochs // 2 if t is None else t", "return 0 if t is None else t",
     "ICCL without warm-up by default"),
    ("lmdlt/stage1/iccl.py", '"momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.99,',
     '"momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.9,', "ICCL momentum default 0.9"),
    ("lmdlt/stage1/bal_mixup.py", 'return {"name": "class_balanced"}', 'return {"name": "instance"}',
     "Bal-Mixup paired batch not class-balanced"),
    ("lmdlt/stage1/cb_wd_max.py", "elif self.threshold is not None and self.steps % self.steps_per_epoch == 0:",
     "elif self.threshold is not None:", "stage-1 MaxNorm per step instead of per epoch"),
    ("lmdlt/stage1/cb_wd_max.py", "            max_norm_(net.classifier.weight, self.threshold)  # the end of an epoch",
     "            pass", "stage-1 per-epoch MaxNorm never applied"),
    ("lmdlt/stage1/supcon.py", "net.classifier(feats.detach())", "net.classifier(feats)",
     "SupCon probe shapes the encoder (features not detached)"),
    ("lmdlt/stage1/lcreg.py", 'lam = self.p["lambda_0"] * epoch / max(self.epochs, 1)', 'lam = self.p["lambda_0"]',
     "LCReg ISDA strength not ramped over the epochs"),
    ("lmdlt/stage2/crt.py", "sampler=self.p[\"sampler\"], generator=generator,\n",
     "sampler=self.p[\"sampler\"], generator=generator, init=(lambda c: (lambda l: (l.weight.data.copy_(torch.as_tensor(np.asarray(c[\"weight\"]))), l.bias.data.copy_(torch.as_tensor(np.asarray(c[\"bias\"]))), l)[-1])(torch.nn.Linear(np.shape(c[\"weight\"])[1], np.shape(c[\"weight\"])[0])))(stage1_classifier),\n",
     "cRT not re-initialised (starts from the stage-1 classifier)"),
    ("lmdlt/stage2/crt.py", '"sampler": {"type": "string", "default": "class_balanced",',
     '"sampler": {"type": "string", "default": "instance",', "cRT not class-balanced"),
    ("lmdlt/stage2/tau_norm.py", 'pred = (val["features"] @ tau_normalised(w, tau).T).argmax(1)',
     'pred = (val["features"] @ tau_normalised(w, tau).T + np.asarray(stage1_classifier["bias"])).argmax(1)',
     "tau-norm keeps the bias"),
    ("lmdlt/stage2/tau_norm.py", "return weight / np.maximum(norms, 1e-12) ** tau",
     "return weight / np.maximum(norms, 1e-12)", "tau-norm tau ignored"),
    ("lmdlt/stage2/tau_norm.py", "key=lambda t: (self.scores[t], -t))", "key=lambda t: -t)",
     "tau-norm tau not selected on validation"),
    ("lmdlt/stage2/lws.py", "        self.fc.requires_grad_(False)\n", "        pass\n",
     "LWS trains the classifier too"),
    ("lmdlt/stage2/lws.py", "self.scales = nn.Parameter(torch.ones(weight.shape[0]))",
     "self.scales = nn.Parameter(torch.ones(weight.shape[0]), requires_grad=False)", "LWS scales frozen"),
    ("lmdlt/stage2/ncm.py", "self.mean = x.mean(0)", "self.mean = np.zeros(x.shape[1])",
     "NCM without mean subtraction"),
    ("lmdlt/stage2/ncm.py", "out = z @ _l2(self.centroids).T", "out = z @ self.centroids.T",
     "NCM centroids not normalised"),
    ("lmdlt/stage2/kd_rebalance.py", "return (1 - w_d) * ce + w_d * tau_d ** 2 * kl",
     "return (1 - w_d) * ce + w_d * kl", "KD temperature squared missing"),
    ("lmdlt/stage2/kd_rebalance.py", 'opts = {"gamma": self.p["gamma"]} if', "opts = {} if",
     "KD rebalancing sampler gamma ignored"),
    ("lmdlt/stage2/kd_rebalance.py",
     "F.log_softmax(student / tau_d, dim=1), F.log_softmax(teacher / tau_d, dim=1)",
     "F.log_softmax(teacher / tau_d, dim=1), F.log_softmax(student / tau_d, dim=1)", "KD KL direction reversed"),
    ("lmdlt/stage2/logit_adjust.py", "return np.asarray(logits, dtype=np.float64) - tau * log_pi[None, :]",
     "return np.asarray(logits, dtype=np.float64) + tau * log_pi[None, :]", "logit adjustment sign flipped"),
    ("lmdlt/stage2/gcl.py", 'init=CosineLinear(stage1_classifier["weight"])',
     'init=CosineLinear(np.random.default_rng(0).normal(size=np.shape(stage1_classifier["weight"])))',
     "GCL stage 2 not from the stage-1 classifier"),
    ("lmdlt/stage2/gcl.py", "return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()",
     "return F.normalize(x, dim=1) @ self.weight.t()", "GCL stage-2 classifier rows not normalised"),
    ("lmdlt/stage2/cb_wd_max.py", "cb_loss(logits, y, self.class_weights, self.p[\"loss\"])",
     "cb_loss(logits, y, torch.ones_like(self.class_weights), self.p[\"loss\"])", "CB+WD+Max without class weights"),
    ("lmdlt/stage2/cb_wd_max.py", "                max_norm_(l.weight, self.threshold)\n", "                pass\n",
     "CB+WD+Max MaxNorm never projected"),
]

LMD_MUTANTS = [
    ("lmdlt/stage2/icc.py", "                    opt.step()\n", "                    pass\n",
     "E-step never steps its optimiser"),
    ("lmdlt/stage2/icc.py", '            g["lr"] = lr\n', '            g["lr"] = 0.0\n',
     "E-step learning rate 0"),
    ("lmdlt/stage2/icc.py", "terms = e_step_terms(net, layer, x, y, mu, chol, p)",
     "terms = e_step_terms(net, net.classifier, x, y, mu, chol, p)",
     "E-step uses the stage-1 classifier instead of f^j"),
    ("lmdlt/stage2/icc.py", 'make_sampler(y_tr, p["e_sampler"], generator)',
     'make_sampler(y_tr, "class_balanced", generator)', "E-step sampler forced class-balanced"),
    ("lmdlt/stage2/icc.py", "mu = mstep.mu.to(device, torch.float32)",
     "mu = torch.zeros_like(mstep.mu).to(device, torch.float32)", "FDC against zero means"),
    ("lmdlt/stage2/icc.py", "factor = lr_factor(p, j)", "factor = 1.0", "lr milestones ignored"),
    ("lmdlt/stage2/icc.py", 'g["lr"] = p["m_lr"] * factor', 'g["lr"] = p["m_lr"]',
     "M-step rate ignores the milestones"),
    ("lmdlt/stage2/icc.py", 'if p["select"] == "last" or val_bacc > best["val_bacc"]:', "if True:",
     "ICC select ignored (always the last)"),
    ("lmdlt/stage2/icc.py", '"classifier_init": {"enum": ["once", "per_iteration"], "default": "once"',
     '"classifier_init": {"enum": ["once", "per_iteration"], "default": "per_iteration"',
     "classifier re-created per iteration by default"),
    ("lmdlt/stage2/icc.py", 'if p["eval_features"] == "pre_e_step":', "if False:",
     "eval_features ignored"),
    ("lmdlt/stage2/icc.py", '"default": [],\n', '"default": [50, 100, 150],\n',
     "decayed rates by default"),
    ("lmdlt/stage2/icc.py", '"lambda_e": {"type": "number", "minimum": 0, "default": 1e-4,',
     '"lambda_e": {"type": "number", "minimum": 0, "default": 1e-3,', "lambda_e default changed"),
    ("lmdlt/stage2/vfc.py", 'if p["features"] == "virtual":', "if True:",
     "features: real ignored (w/o VFC trains on virtual features)"),
    ("lmdlt/stage2/vfc.py", 'if self.p.get("virtual_stats") == "current"', "if False",
     "virtual_stats ignored"),
    ("lmdlt/stage2/vfc.py", '"m_schedule": {"enum": ["constant", "cosine"], "default": "constant",',
     '"m_schedule": {"enum": ["constant", "cosine"], "default": "cosine",',
     "VFC (w/o ICC) decays its rate unlike ICC's M-step"),
    ("lmdlt/stage2/gaussian.py", "term = psi - phi", "term = phi - psi", "FDC sign flipped"),
    ("lmdlt/stage2/gaussian.py", "term = torch.clamp(term, min=-floor * c)", "pass",
     "FDC floor ignored"),
    ("lmdlt/stage2/gaussian.py", "term = term * (reference_dim / c)", "pass",
     "FDC reference_dim ignored"),
    ("lmdlt/stage2/gaussian.py", "cov[k] = d.T @ d / (len(xk) - 1)", "cov[k] = d.T @ d / len(xk)",
     "covariance /n instead of /(n-1)"),
    ("lmdlt/stage2/gaussian.py", '    if sampler != "instance":\n        if generator is None:',
     '    if False:\n        if generator is None:', "class-balanced estimate (Eq. 7) ignored"),
    ("lmdlt/stage2/gaussian.py", "return ema * a + new * (1.0 - a)", "return new.clone()",
     "statistics EMA dropped"),
    ("lmdlt/stage1/rrl.py", "        xs, xw = x\n", "        xw, xs = x\n",
     "student and teacher views swapped"),
    ("lmdlt/stage1/rrl.py", "        teacher = self._teacher(net)\n", "        teacher = net\n",
     "teacher replaced by the student"),
    ("lmdlt/stage1/rrl.py", "F.kl_div(F.log_softmax(logits_s, 1), F.softmax(logits_t, 1)",
     "F.kl_div(F.log_softmax(logits_t, 1), F.softmax(logits_s, 1)", "KL direction reversed"),
    ("lmdlt/stage1/rrl.py", 'logits_ce = logits_s if p["ce_view"] == "strong" else net(xw)',
     "logits_ce = net(xw)", "ce_view ignored"),
    ("lmdlt/stage1/rrl.py", '{"ce": p["ce_weight"] * F.cross_entropy', '{"ce": F.cross_entropy',
     "ce_weight ignored"),
    ("lmdlt/stage1/rrl.py", 'terms["sample"] = lam * sample_loss', 'terms["sample"] = sample_loss',
     "lambda_1 missing on L_sample"),
    ("lmdlt/stage1/rrl.py", 'terms["channel"] = lam * channel_loss', 'terms["channel"] = channel_loss',
     "lambda_1 missing on L_channel"),
    ("lmdlt/stage1/rrl.py", 'terms["prob"] = lam * p["prob_weight"] *', 'terms["prob"] = p["prob_weight"] *',
     "lambda_1 missing on L_prob"),
    ("lmdlt/stage1/rrl.py", 'terms["prob"] = lam * p["prob_weight"] *', 'terms["prob"] = lam *',
     "prob_weight ignored"),
    ("lmdlt/stage1/rrl.py", 'teacher.train(p["teacher_bn"] == "batch")', "teacher.train(True)",
     "teacher_bn ignored"),
    ("lmdlt/stage1/rrl.py", 'copy_buffers=self.p["teacher_bn"] == "running")', "copy_buffers=False)",
     "teacher's buffer copy dropped"),
    ("lmdlt/stage1/rrl.py", "        return TwoViews(strong, weak)\n", "        return TwoViews(weak, weak)\n",
     "strong view equal to the weak view"),
    ("lmdlt/stage1/rrl.py", 'frozen = p["bn_stats"] == "weak_pass"', "frozen = False",
     "strong view updates the BatchNorm statistics"),
    ("lmdlt/stage1/rrl.py", 'if self.p["bn_stats"] == "recalibrate":', "if False:",
     "BatchNorm recalibration skipped"),
    ("lmdlt/stage1/rrl.py", 'consistency = epoch >= p["consistency_start_epoch"]',
     'consistency = epoch > p["consistency_start_epoch"]', "consistency terms start one epoch late"),
    ("lmdlt/stage1/rrl.py", "a = min(1.0 - 1.0 / (step + 1), decay)", "a = decay",
     "teacher EMA without the reference's warm-up"),
    ("lmdlt/stage1/rrl.py", '"border": {"enum": ["reflect", "constant"], "default": "reflect",',
     '"border": {"enum": ["reflect", "constant"], "default": "constant",', "black-filled rotations by default"),
    ("lmdlt/stage1/rrl.py", '"grid_dropout_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2,',
     '"grid_dropout_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,',
     "grid dropout p 0.5 by default"),
    ("lmdlt/stage1/trainer.py", '(method.selectable(epoch) and val_bacc > best["val_bacc"])',
     '(val_bacc > best["val_bacc"])', "best_val keeps a warm-up epoch"),
]

METRICS_MUTANTS = [
    ("lmdlt/metrics.py", '"bacc": skm.balanced_accuracy_score(labels, pred),',
     '"bacc": skm.accuracy_score(labels, pred),', "BACC is plain accuracy"),
    ("lmdlt/metrics.py", 'weights="quadratic"),', "weights=None),", "quadratic kappa unweighted"),
    ("lmdlt/metrics.py", "(skm.roc_auc_score(labels, probs[:, 1]) if k == 2 else",
     "(skm.roc_auc_score(labels, probs[:, 0]) if k == 2 else", "binary AUC scored on the negative class"),
    ("lmdlt/metrics.py", 'multi_class="ovr", average="macro", labels=classes)),',
     'multi_class="ovr", average="weighted", labels=classes)),', "AUC weighted by class size, not macro"),
    ("lmdlt/metrics.py", '"f1": skm.f1_score(labels, pred, labels=classes, average="macro", zero_division=0),',
     '"f1": skm.f1_score(labels, pred, labels=classes, average="micro", zero_division=0),', "F1 micro, not macro"),
    ("lmdlt/metrics.py", "probs = softmax(logits.astype(np.float64), axis=1)",
     "probs = softmax(logits.astype(np.float64), axis=0)", "softmax over the images, not the classes"),
    ("lmdlt/metrics.py", "per_class = skm.recall_score(labels, pred, labels=classes, average=None, zero_division=0)",
     "per_class = skm.recall_score(labels, pred, average=None, zero_division=0)",
     "per-class recall drops a class absent from the split"),
    ("lmdlt/metrics.py", "return float(np.abs(acc_sum - conf_sum).sum() / len(labels))",
     "return float(np.abs(acc_sum.sum() - conf_sum.sum()) / len(labels))",
     "ECE without bins (|accuracy - confidence| overall)"),
    ("lmdlt/metrics.py", "conf = probs.max(1)", "conf = probs.mean(1)", "ECE confidence not the top-1 probability"),
    ("lmdlt/metrics.py", "head = [c for c in range(k) if counts[c] > many]",
     "head = [c for c in range(k) if counts[c] >= many]", "shots rule: head includes n = many"),
    ("lmdlt/metrics.py", "order = sorted(range(k), key=lambda c: (-counts[c], c))",
     "order = sorted(range(k), key=lambda c: (counts[c], c))", "rank rule: head = the rarest classes"),
    ("lmdlt/metrics.py", 'float(np.mean(per_class[groups.get(g, [])]))', "float(np.mean(per_class))",
     "group BACC is the overall BACC"),
    ("lmdlt/metrics.py", "    if not np.isfinite(logits).all():\n", "    if False:\n",
     "non-finite logits scored"),
    ("lmdlt/metrics.py", 'train_counts = np.bincount(f["train/labels"][:], minlength=len(class_names))',
     'train_counts = np.bincount(f[f"{split}/labels"][:], minlength=len(class_names))',
     "training counts taken from the scored split"),
]

SPLITS_MUTANTS = [
    ("lmdlt/data/splits.py", "    if len(dup):\n        raise ValueError(f\"split leak: image id",
     "    if False:\n        raise ValueError(f\"split leak: image id", "an image id in two splits accepted"),
    ("lmdlt/data/splits.py", "bad = per_group[per_group > 1]", "bad = per_group[per_group > 2]",
     "a group in two splits accepted"),
    ("lmdlt/data/splits.py", 'check_disjoint(table, groups=cfg.get("grouped") is not False)',
     "check_disjoint(table, groups=False)", "a leaking split accepted when split.grouped is left out"),
    ("lmdlt/data/splits.py", 'return table["group"].map(normalise_key)', 'return table["group"].astype(str)',
     "groups 4 and 4.0 compared as two (the leak report and the split disagree)"),
    ("lmdlt/data/splits.py", '"train_test_groups": len(train & sets["test"]),',
     '"train_test_groups": len(sets["val"] & sets["test"]),', "leak report: train/test groups miscounted"),
    ("lmdlt/data/splits.py", 'out[f"{s}_images_with_train_group"] = int(group[rows].isin(train).sum())',
     'out[f"{s}_images_with_train_group"] = int(group[rows].isin(sets[s]).sum())',
     "leak report: images with a training group miscounted"),
    ("lmdlt/data/splits.py", '"groups_in_several_splits": int((table["split"].groupby(group).nunique() > 1).sum()),',
     '"groups_in_several_splits": int((table["split"].groupby(group).nunique() > 2).sum()),',
     "leak report: groups in two splits not counted"),
    ("lmdlt/data/splits.py", '"split": rows["split"].tolist()})', '"split": []})',
     "manifest hash blind to the split column"),
    ("lmdlt/data/splits.py", '    if content_hash(table) != meta["content_hash"]:', "    if False:",
     "an edited manifest read without complaint"),
    ("lmdlt/data/splits.py", "        if missing:\n            names = [index.class_names[c] for c in sorted(missing)]",
     "        if False:\n            names = [index.class_names[c] for c in sorted(missing)]",
     "a split missing a class accepted"),
    ("lmdlt/data/splits.py", "        n_val, n_test = max(n_val, 1), max(n_test, 1)", "        pass",
     "a small class gets no val/test image"),
    ("lmdlt/data/splits.py", 'n_cap = cfg.get("n_cap") or int(avail.min())', "n_cap = int(avail.min())",
     "cui: split.n_cap ignored"),
    ("lmdlt/data/splits.py", "        return sorted(range(num_classes), key=lambda c: (-counts[c], c))",
     "        return sorted(range(num_classes), key=lambda c: (counts[c], c))",
     "class_order count: tail first"),
    ("lmdlt/data/splits.py", "        remaining[c] = rows[n_test + n_val:]", "        remaining[c] = rows[n_test:]",
     "cui: training images drawn from the val images"),
    ("lmdlt/data/splits.py", '    rng = np.random.default_rng(seed)\n    split = _PROTOCOLS',
     '    rng = np.random.default_rng(0)\n    split = _PROTOCOLS', "the seed ignored by the split"),
    ("lmdlt/data/longtail.py", "return [math.ceil(n * mu**i) for i, n in enumerate(counts)]",
     "return [math.floor(n * mu**i) for i, n in enumerate(counts)]", "lmd profile rounded down"),
    ("lmdlt/data/longtail.py", "mu = (n_max / (n_min * ratio)) ** (1.0 / (k - 1))",
     "mu = (n_max / (n_min * ratio)) ** (1.0 / k)", "lmd profile exponent 1/K"),
    ("lmdlt/data/longtail.py", "return [math.ceil(n_cap * mu**i) for i in range(num_classes)]",
     "return [math.ceil(n_cap * (1.0 / ratio) ** (i / (num_classes - 1))) for i in range(num_classes)]",
     "cui profile computed as (1/r)^(i/(K-1)) (not Ju et al.'s counts)"),
]

STAMPS_MUTANTS = [
    ("lmdlt/stamps.py", "            if f.read() == text:", "            if True:", "a changed stamp never rewritten"),
    ("lmdlt/stamps.py", "            if f.read() == text:", "            if False:",
     "an unchanged stamp rewritten (every job re-runs)"),
    ("lmdlt/stamps.py", "    if dryrun:", "    if False:", "a dry-run writes stamps into results"),
    ("lmdlt/stamps.py", "adopted = missing and len(existing) == len(outputs) and (adopt is None or adopt(outputs))",
     "adopted = missing and len(existing) == len(outputs)", "a data stamp adopted by outputs of other data"),
    ("lmdlt/stamps.py", "adopted = missing and len(existing) == len(outputs) and (adopt is None or adopt(outputs))",
     "adopted = False", "results from before stamps re-run"),
    ("lmdlt/stamps.py", "return os.stat(stamp_path(output, kind)).st_mtime_ns > os.stat(output).st_mtime_ns",
     "return os.stat(stamp_path(output, kind)).st_mtime_ns < os.stat(output).st_mtime_ns",
     "stamp_is_newer inverted"),
    ("lmdlt/stamps.py", 'f".{os.path.basename(first)}.{kind}.json"', 'f".{os.path.basename(first)}.params.json"',
     "the data stamp is the params stamp"),
    ("lmdlt/data/fingerprint.py", "row = [image_id, names[int(label)], group, fold, key]",
     "row = [image_id, names[int(label)], group, fold, None]", "fingerprint blind to the image files"),
    ("lmdlt/data/fingerprint.py", '"class_names": list(index.class_names)}).encode())',
     '"class_names": []}).encode())', "fingerprint blind to a renamed class"),
    ("lmdlt/data/fingerprint.py", "    for p in source.data_files():", "    for p in []:",
     "fingerprint blind to the shared data files (.npz, pickles)"),
    ("lmdlt/data/fingerprint.py", "            return [st.st_size, st.st_mtime_ns]", "            return [st.st_size]",
     "fingerprint (stat) blind to a file's modification time"),
]

PROVENANCE_MUTANTS = [
    ("lmdlt/io.py", "    if got != want:", "    if False:", "config hash never compared"),
    ("lmdlt/io.py", '"config_hash": sha256_json(config),', '"config_hash": sha256_json(stage),',
     "config hash of the stage name, not the config"),
    ("lmdlt/io.py", 'blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)',
     'blob = json.dumps(obj, sort_keys=False, separators=(",", ":"), default=_json_default)',
     "hash depends on key order"),
    ("lmdlt/io.py", "        if tmp.exists():\n            tmp.unlink()", "        if False:\n            tmp.unlink()",
     "a failed write leaves its temporary"),
    ("lmdlt/stage2/runner.py", '        if actual != recorded["checkpoint"]:', "        if False:",
     "features of another checkpoint accepted"),
    ("lmdlt/stage2/runner.py", '        if expected != recorded["split"]:', "        if False:",
     "features of another split accepted"),
    ("lmdlt/stage2/runner.py", "        if parents.get(key) not in (None, value):", "        if False:",
     "inconsistent features provenance accepted"),
    ("lmdlt/stage2/runner.py", "    if stage1_params is not None:\n        check_config_hash(artefact",
     "    if False:\n        check_config_hash(artefact", "stage-2 input of another stage-1 config accepted"),
    ("lmdlt/features.py", '        check_config_hash(checkpoint_path, meta["provenance"], stage1_params, out_path, "stage-1")',
     "        pass", "extraction from a checkpoint of another stage-1 config"),
    ("lmdlt/data/image_cache.py", '    if parents.get("split") != manifest_meta["content_hash"]:', "    if False:",
     "a checkpoint trained on another split accepted"),
    ("lmdlt/data/image_cache.py", '    if parents.get("images") is not None and parents["images"] != images_hash:',
     "    if False:", "a checkpoint trained on another image cache accepted"),
    ("lmdlt/data/image_cache.py", "            if ours != theirs:", "            if False:",
     "an image cache of another source accepted for the split"),
    ("lmdlt/data/image_cache.py", '    if ours and theirs and ours["sha256"] != theirs["sha256"]:', "    if False:",
     "cache and split of different data accepted"),
    ("lmdlt/data/image_cache.py", '    if now.sha256 != rec["sha256"]:', "    if False:",
     "data changed since the cache accepted"),
    ("lmdlt/models/checkpoint.py", "return torch.load(path, map_location=device, weights_only=True)",
     "return torch.load(path, map_location=device, weights_only=False)", "a checkpoint's pickled objects loaded"),
    ("lmdlt/metrics.py", '    if recorded != meta["content_hash"]:', "    if False:",
     "predictions of another split scored"),
    ("lmdlt/metrics.py", "    if parent is not None and parent != recorded:", "    if False:",
     "inconsistent predictions provenance scored"),
    ("lmdlt/metrics.py", "    if evaluated != expected:", "    if False:", "predictions of other images scored"),
    ("lmdlt/metrics.py", "    wrong = [i for i, y in zip(ids, labels) if label_of[i] != int(y)]", "    wrong = []",
     "predictions with other labels scored"),
    ("lmdlt/metrics.py", '    leaked = evaluated & set(others["id"])', "    leaked = set()",
     "a test image also in training scored"),
    ("lmdlt/metrics.py", "        if shared and not naive:", "        if False:", "a group leak scored"),
    ("lmdlt/metrics.py", '        naive = meta.get("provenance", {}).get("config", {}).get("split", {}).get("grouped") is False',
     "        naive = True", "every split treated as a naive split (group leak only logged)"),
    ("lmdlt/metrics.py", "    if stage1_params is not None:\n        check_config_hash(predictions_path",
     "    if False:\n        check_config_hash(predictions_path", "metrics of another stage-1 config"),
]

APPEND = None  # a mutant whose original is APPEND adds its mutated text at the end of the file

# (file, original, mutated, description), or a callable giving them from the copy (generated)
GROUPS: dict[str, dict] = {
    "lmd": {"tests": LMD_TESTS, "mutants": LMD_MUTANTS},
    "baselines": {"tests": BASELINE_TESTS, "mutants": BASELINE_MUTANTS},
    "metrics": {"tests": METRICS_TESTS, "mutants": METRICS_MUTANTS},
    "splits": {"tests": SPLITS_TESTS, "mutants": SPLITS_MUTANTS},
    "stamps": {"tests": STAMPS_TESTS, "mutants": STAMPS_MUTANTS},
    "provenance": {"tests": PROVENANCE_TESTS, "mutants": PROVENANCE_MUTANTS},
    "options": {"tests": METHOD_TESTS, "mutants": "options"},
    "params": {"tests": METHOD_TESTS, "mutants": "params"},
}

# run in the copy: every param of every registered method, as JSON
_LIST_PARAMS = """
import json
from lmdlt.stage1 import available_methods as a1, get_method as g1
from lmdlt.stage2 import available_methods as a2, get_method as g2
out = []
for stage, avail, get in ((1, a1, g1), (2, a2, g2)):
    for name in avail():
        cls = get(name)
        for key, spec in cls.params.items():
            out.append({"stage": stage, "method": name, "module": cls.__module__,
                        "cls": cls.__name__, "param": key, "spec": spec})
print(json.dumps(out))
"""


def is_option(spec: dict) -> bool:
    """A switch rather than a magnitude: an enum, a boolean, a nullable param (null: off), a
    string (a sampler's name) or a list."""
    types = spec.get("type")
    types = set(types) if isinstance(types, list) else {types}
    return "enum" in spec or bool(types & {"boolean", "null", "string", "array"})


def ignored_param_mutants(tree: Path, options: bool) -> list[tuple]:
    """One mutant per method param (``options``: the options, else the others): the method's
    class wrapped, at the end of its module, so that the param is always its default."""
    out = subprocess.run([sys.executable, "-c", _LIST_PARAMS], cwd=tree, env=_env(tree),
                         capture_output=True, text=True, check=True).stdout
    mutants = []
    for p in json.loads(out):
        if is_option(p["spec"]) != options:
            continue
        path = "lmdlt/" + p["module"].split(".", 1)[1].replace(".", "/") + ".py"
        code = (f"\n\ndef _mutant_ignores(init, key, value):  # mutation: one param ignored\n"
                f"    def wrapped(self, params, *args, **kwargs):\n"
                f"        init(self, {{**params, key: value}}, *args, **kwargs)\n"
                f"    return wrapped\n\n\n"
                f"{p['cls']}.__init__ = _mutant_ignores({p['cls']}.__init__, {p['param']!r}, "
                f"{p['spec'].get('default')!r})\n")
        mutants.append((path, APPEND, code, f"stage-{p['stage']} {p['method']}: {p['param']} ignored "
                                              f"(always {json.dumps(p['spec'].get('default'))})"))
    return mutants


def mutants_of(group: str, tree: Path) -> list[tuple]:
    m = GROUPS[group]["mutants"]
    return ignored_param_mutants(tree, m == "options") if isinstance(m, str) else m


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree)}


def worktree(tmp: Path, uncommitted: bool) -> Path:
    """A copy of HEAD (plus, with ``uncommitted``, the working copy's uncommitted edits)."""
    dest = tmp / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(dest), "HEAD"],
                   check=True, capture_output=True)
    diff = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--binary"], check=True,
                          capture_output=True).stdout
    if uncommitted and diff:
        subprocess.run(["git", "-C", str(dest), "apply", "--binary"], input=diff, check=True)
    if uncommitted:  # untracked files (new tests) too
        new = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--others", "--exclude-standard", "-z"],
                             check=True, capture_output=True).stdout.decode().split("\0")
        for rel in filter(None, new):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes((ROOT / rel).read_bytes())
    return dest


def present(tree: Path, tests: list[str]) -> list[str]:
    """The group's test files that exist in the copy (files are renamed as the suite moves)."""
    return [t for t in tests if (tree / t).is_file()]


def run_tests(tree: Path, tests: list[str], deselect: list[str] = ()) -> bool:
    extra = [a for d in deselect for a in ("--deselect", d)]
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *FAST_TIER,
                        *extra, *tests], cwd=tree, env=_env(tree), capture_output=True, text=True)
    return r.returncode == 0


def apply(text: str, old, new: str) -> str | None:
    """The mutated text, or None when the original snippet is not found exactly once."""
    if old is APPEND:
        return text + new
    return text.replace(old, new) if text.count(old) == 1 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", choices=sorted(GROUPS), action="append")
    ap.add_argument("--list", action="store_true", help="print the mutants")
    ap.add_argument("--check", action="store_true", help="check that every snippet is found once")
    ap.add_argument("--uncommitted", action="store_true",
                    help="mutate HEAD plus the uncommitted edits (and untracked files)")
    ap.add_argument("--deselect", action="append", default=[], metavar="NODEID",
                    help="a test left out of every run (one failing for reasons of its own)")
    args = ap.parse_args()
    groups = args.group or [g for g in GROUPS if g != "params"]  # params: on request (long)
    survivors, skipped, total = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        tree = worktree(Path(tmp), args.uncommitted)
        try:
            check = subprocess.run([sys.executable, "-c", "import lmdlt; print(lmdlt.__file__)"],
                                   cwd=tree, env=_env(tree), capture_output=True, text=True).stdout.strip()
            assert check.startswith(str(tree)), f"tests would import {check}, not the copy"
            for g in groups:
                mutants = mutants_of(g, tree)
                tests = present(tree, GROUPS[g]["tests"])
                if args.list or args.check:
                    for f, old, new, what in mutants:
                        found = apply((tree / f).read_text(), old, new) is not None
                        if args.list or not found:
                            print(f"{g}\t{'ok   ' if found else 'STALE'}\t{f}\t{what}")
                    print(f"[{g}] {len(mutants)} mutants; tests: {' '.join(tests)}")
                    continue
                if not tests or not run_tests(tree, tests, args.deselect):
                    print(f"[{g}] SKIPPED: the unmutated tests fail (or none found): fix them, or "
                          "--deselect a test failing for reasons of its own", flush=True)
                    skipped.append(g)
                    continue
                total += len(mutants)
                for f, old, new, what in mutants:
                    path = tree / f
                    text = path.read_text()
                    mutated = apply(text, old, new)
                    if mutated is None:
                        print(f"[{g}] STALE    {f}: {what} (snippet found {text.count(old)} times)", flush=True)
                        survivors.append((g, f, what, "stale"))
                        continue
                    path.write_text(mutated)
                    t0 = time.perf_counter()
                    try:
                        ok = run_tests(tree, tests, args.deselect)
                    finally:
                        path.write_text(text)
                    status = "SURVIVED" if ok else "killed"
                    print(f"[{g}] {status:8s} {f}: {what} ({time.perf_counter() - t0:.0f} s)", flush=True)
                    if ok:
                        survivors.append((g, f, what, "survived"))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)
    if args.list or args.check:
        return 0
    print(f"\n{total - len(survivors)} of {total} mutants killed; survivors: {len(survivors)}")
    for g, f, what, why in survivors:
        print(f"  {why}: [{g}] {f}: {what}")
    if skipped:
        print(f"groups not run (their unmutated tests fail): {', '.join(skipped)}")
        return 2
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
