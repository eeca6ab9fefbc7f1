"""A small mutation check: apply one behavioural edit at a time to a copy of the tree and run
the tests that should notice it. A mutant that leaves them green "survives".

    python scripts/mutation_check.py                  # every group
    python scripts/mutation_check.py --group lmd      # one group (lmd, baselines)
    python scripts/mutation_check.py --list           # the mutants, without running them

Each mutant is (file, original snippet, mutated snippet, what it breaks); the original must
occur exactly once (so the list fails loudly when the code moves on). The tree is copied with
``git worktree`` into a temporary folder, so the working copy is never touched; the tests run
with that copy first on ``sys.path``. Slow (about 20-60 s per mutant on 2 cores): not in CI.
Results and the argued-equivalent survivors: docs/mutation.md.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LMD_TESTS = ["tests/test_lmd_behaviour.py", "tests/test_lmd.py", "tests/test_vfc.py"]

BASELINE_TESTS = ["tests/test_method_defaults.py", "tests/test_baselines_reference.py",
                  "tests/test_stage2_methods.py", "tests/test_stage1_losses.py",
                  "tests/test_reference_schedules.py", "tests/test_baselines_mutants.py"]

# the baselines: every stage-1/stage-2 module but LMD's (rrl, icc, vfc, gaussian)
BASELINE_MUTANTS = [
    ("lmdlt/stage1/focal.py", "return (-(1 - logp_t.exp()) ** gamma * logp_t).mean()",
     "return (-logp_t).mean()", "focal gamma ignored (plain CE)"),
    ("lmdlt/stage1/focal.py", '"default": 2.0}}', '"default": 1.0}}', "focal gamma default 1"),
    ("lmdlt/stage1/cb_focal.py", "return (weights.to(logits.device)[y] * per_class.sum(1)).mean()",
     "return per_class.sum(1).mean()", "CB-Focal class weights dropped"),
    ("lmdlt/stage1/cb_focal.py", "zt = torch.where(onehot, logits, -logits)", "zt = logits",
     "CB-Focal sigmoid target sign ignored for the negatives"),
    ("lmdlt/stage1/cb_focal.py", 'bias.fill_(-math.log(', 'bias.fill_(math.log(',
     "CB-Focal prior bias sign flipped"),
    ("lmdlt/stage1/cb_focal.py", '"gamma": {"type": "number", "minimum": 0, "default": 1.0},',
     '"gamma": {"type": "number", "minimum": 0, "default": 2.0},', "CB-Focal gamma default 2"),
    ("lmdlt/stage1/seesaw.py",
     '        self.cum_counts += torch.bincount(y.cpu(), minlength=len(self.cum_counts)).double()\n'
     '        return {"seesaw": seesaw_loss(net(x), y, self.cum_counts.float(), self.p["p"], self.p["q"])}',
     '        out = {"seesaw": seesaw_loss(net(x), y, self.cum_counts.float(), self.p["p"], self.p["q"])}\n'
     '        self.cum_counts += torch.bincount(y.cpu(), minlength=len(self.cum_counts)).double()\n'
     '        return out', "Seesaw counts updated after the loss"),
    ("lmdlt/stage1/seesaw.py", "ratio = n[None, :] / n[:, None]", "ratio = n[:, None] / n[None, :]",
     "Seesaw mitigation ratio inverted"),
    ("lmdlt/stage1/seesaw.py", "adjusted = logits + s.log() * (1 - onehot)", "adjusted = logits + s.log()",
     "Seesaw factor applied to the target logit too"),
    ("lmdlt/stage1/seesaw.py", '"p": {"type": "number", "minimum": 0, "default": 0.8},',
     '"p": {"type": "number", "minimum": 0, "default": 0.0},', "Seesaw p default 0"),
    ("lmdlt/stage1/rs.py", 'return {"name": "class_balanced"}', "return None", "RS sampler dropped"),
    ("lmdlt/stage1/ldam.py", "out = cos - onehot * margins", "out = cos + onehot * margins",
     "LDAM margin sign flipped"),
    ("lmdlt/stage1/ldam.py", "m = 1.0 / n ** 0.25", "m = 1.0 / n ** 0.5", "LDAM margins n^-1/2"),
    ("lmdlt/stage1/ldam.py", "return self.drw_weights if start is not None and epoch >= start else None",
     "return self.drw_weights if start is not None and epoch > start else None", "DRW one epoch late"),
    ("lmdlt/stage1/ldam.py", "        return epoch >= start\n", "        return True\n",
     "best_val may keep a pre-DRW epoch"),
    ("lmdlt/stage1/ldam.py", 'if self.p["lr_schedule"] == "trainer":', "if True:",
     "LDAM-DRW reference schedule ignored (shared cosine)"),
    ("lmdlt/stage1/ldam.py", "return (warm + 1) / REF_WARMUP", "return 1.0", "LDAM-DRW without warm-up"),
    ("lmdlt/stage1/ldam.py", '"max_m": {"type": "number", "exclusiveMinimum": 0, "default": 0.5},',
     '"max_m": {"type": "number", "exclusiveMinimum": 0, "default": 0.3},', "LDAM max_m default 0.3"),
    ("lmdlt/stage1/ce_drw.py", "weight=None if w is None else w.to(x.device)", "weight=None",
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
    ("lmdlt/stage1/iccl.py", '"momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.99},',
     '"momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.9},', "ICCL momentum default 0.9"),
    ("lmdlt/stage1/bal_mixup.py", 'return {"name": "class_balanced"}', 'return {"name": "instance"}',
     "Bal-Mixup paired batch not class-balanced"),
    ("lmdlt/stage1/cb_wd_max.py", "elif self.threshold is not None and self.steps % self.steps_per_epoch == 0:",
     "elif self.threshold is not None:", "stage-1 MaxNorm per step instead of per epoch"),
    ("lmdlt/stage2/crt.py", "sampler=self.p[\"sampler\"], generator=generator,\n",
     "sampler=self.p[\"sampler\"], generator=generator, init=(lambda c: (lambda l: (l.weight.data.copy_(torch.as_tensor(np.asarray(c[\"weight\"]))), l.bias.data.copy_(torch.as_tensor(np.asarray(c[\"bias\"]))), l)[-1])(torch.nn.Linear(np.shape(c[\"weight\"])[1], np.shape(c[\"weight\"])[0])))(stage1_classifier),\n",
     "cRT not re-initialised (starts from the stage-1 classifier)"),
    ("lmdlt/stage2/crt.py", '"sampler": {"type": "string", "default": "class_balanced"}}',
     '"sampler": {"type": "string", "default": "instance"}}', "cRT not class-balanced"),
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

# (file, original, mutated, description)
GROUPS: dict[str, dict] = {
    "lmd": {"tests": LMD_TESTS, "mutants": [
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
    ]},
    "baselines": {"tests": BASELINE_TESTS, "mutants": BASELINE_MUTANTS},
}


def worktree(tmp: Path, uncommitted: bool) -> Path:
    """A copy of HEAD (plus, with ``uncommitted``, the working copy's uncommitted edits)."""
    dest = tmp / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(dest), "HEAD"],
                   check=True, capture_output=True)
    diff = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD"], check=True, capture_output=True).stdout
    if uncommitted and diff:
        subprocess.run(["git", "-C", str(dest), "apply"], input=diff, check=True)
    return dest


def run_tests(tree: Path, tests: list[str]) -> bool:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                        "--durations=0", *tests], cwd=tree, env=env, capture_output=True, text=True)
    return r.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", choices=sorted(GROUPS), action="append")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--uncommitted", action="store_true", help="mutate HEAD plus the uncommitted edits")
    args = ap.parse_args()
    groups = args.group or sorted(GROUPS)
    if args.list:
        for g in groups:
            for f, _, _, what in GROUPS[g]["mutants"]:
                print(f"{g}\t{f}\t{what}")
        return 0
    survivors = []
    with tempfile.TemporaryDirectory() as tmp:
        tree = worktree(Path(tmp), args.uncommitted)
        try:
            check = subprocess.run([sys.executable, "-c", "import lmdlt; print(lmdlt.__file__)"],
                                   cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                                   capture_output=True, text=True).stdout.strip()
            assert check.startswith(str(tree)), f"tests would import {check}, not the copy"
            for g in groups:
                tests = GROUPS[g]["tests"]
                if not run_tests(tree, tests):
                    print(f"[{g}] the unmutated tests fail: fix them first", flush=True)
                    return 2
                for f, old, new, what in GROUPS[g]["mutants"]:
                    path = tree / f
                    text = path.read_text()
                    if text.count(old) != 1:
                        print(f"[{g}] STALE  {f}: {what} (snippet found {text.count(old)} times)", flush=True)
                        survivors.append((g, f, what, "stale"))
                        continue
                    path.write_text(text.replace(old, new))
                    t0 = time.perf_counter()
                    try:
                        ok = run_tests(tree, tests)
                    finally:
                        path.write_text(text)
                    status = "SURVIVED" if ok else "killed"
                    print(f"[{g}] {status:8s} {f}: {what} ({time.perf_counter() - t0:.0f} s)", flush=True)
                    if ok:
                        survivors.append((g, f, what, "survived"))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)
    total = sum(len(GROUPS[g]["mutants"]) for g in groups)
    print(f"\n{total - len(survivors)} of {total} mutants killed; survivors: {len(survivors)}")
    for g, f, what, why in survivors:
        print(f"  {why}: [{g}] {f}: {what}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
