"""A small mutation check: apply one behavioural edit at a time to a copy of the tree and run
the tests that should notice it. A mutant that leaves them green "survives".

    python scripts/mutation_check.py                  # every group
    python scripts/mutation_check.py --group lmd      # one group
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
