"""Share a row: `lmdlt bundle` writes everything behind a row, `lmdlt verify` re-scores it and
names the member of a changed or truncated bundle."""
import json
import shutil
import tarfile

import numpy as np
import pytest
import yaml

from lmdlt.bundle import (MANIFEST, RESCORERS, BundleError, extract_checked, make_bundle,
                          resolve_row, stage2_logits, verify_bundle, verify_problems)
from lmdlt.cli import main
from lmdlt.io import read_json, sha256_file

METRICS = {"bacc", "auc", "f1", "precision", "recall", "kappa_quadratic", "kappa", "accuracy", "ece",
           "per_class_recall"}


@pytest.fixture(scope="module")
def icc_bundle(tiny_experiment, tmp_path_factory):
    return make_bundle(tiny_experiment, "ce/icc", tmp_path_factory.mktemp("bundle") / "icc.tar")


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_the_bundle_holds_everything_behind_the_row_for_every_seed(icc_bundle, tiny_experiment):
    members = _members(icc_bundle)
    assert list(members)[0] == MANIFEST
    for seed in (0, 1):
        for name in ("split.parquet", "stage1/ce/model.pt", "stage1/ce/features.h5",
                     "stage1/ce/metrics.json", "stage2/ce/icc/predictions.h5",
                     "stage2/ce/icc/metrics.json", "provenance.json"):
            assert f"seed{seed}/{name}" in members
    assert {"config/stage1.json", "config/stage2.json", "config/split.json", "config/experiment.yaml",
            "environment.json", "row.json", "images.h5"} <= set(members)
    with tarfile.open(icc_bundle) as tar:
        manifest = json.load(tar.extractfile(MANIFEST))
        env = json.load(tar.extractfile("environment.json"))
        stage2 = json.load(tar.extractfile("config/stage2.json"))
        # the bundled files are the results' own, byte for byte
        ckpt = tar.extractfile("seed1/stage1/ce/model.pt").read()
    assert [m["name"] for m in manifest["members"]] == list(members)[1:]
    assert {"torch", "numpy", "scikit-learn", "lmdlt", "torchvision"} <= set(env["packages"])
    assert env["code_version"]
    config = yaml.safe_load((tiny_experiment / "report/config.yaml").read_text())
    assert stage2 == config["stage2"]["icc"]  # the resolved stage config, defaults filled
    assert stage2["params"]["e_label_loss"] == "ce"
    import hashlib
    assert hashlib.sha256(ckpt).hexdigest() == sha256_file(tiny_experiment / "seed1/stage1/ce/model.pt")


def test_verify_rescores_every_seed_equal(icc_bundle, tiny_experiment):
    result = verify_bundle(icc_bundle)
    assert verify_problems(result) == []
    rows = result["metrics"]
    # 2 seeds x (stage 1 + stage 2) x every metric of metrics.json
    assert len(rows) == 2 * 2 * len(METRICS)
    assert {r["metric"] for r in rows} == METRICS and all(r["equal"] for r in rows)
    bacc = next(r for r in rows if r["seed"] == 1 and r["stage"] == "stage2 icc" and r["metric"] == "bacc")
    assert bacc["recorded"] == read_json(tiny_experiment / "seed1/stage2/ce/icc/metrics.json")["metrics"]["bacc"]
    checks = [what for _, what, ok, _ in result["checks"]]
    assert all(ok for _, _, ok, _ in result["checks"])
    assert any("re-extracted from the images" in c for c in checks)
    assert any("icc classifier re-applied to the fine-tuned encoder's" in c for c in checks)


def test_verify_cli_on_a_feature_method_row_by_its_label(tiny_experiment, tmp_path, capsys):
    out = tmp_path / "crt.tar.gz"  # compressed on request
    assert main(["bundle", str(tiny_experiment), "CE + cRT", "--out", str(out)]) == 0
    assert main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "crt classifier re-applied to the re-extracted stage-1 test features" in text
    assert "re-score equal" in text and " NO " not in text


def test_a_changed_byte_is_an_error_naming_the_member(icc_bundle, tmp_path, capsys):
    member = "seed1/stage1/ce/model.pt"
    offset = _members(icc_bundle)[member].offset_data + 1000
    data = bytearray(icc_bundle.read_bytes())
    data[offset] ^= 0x01
    bad = tmp_path / "changed.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"member '{member}' differs from MANIFEST.json"):
        extract_checked(bad, tmp_path / "x")
    assert main(["verify", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lmdlt verify: error:") and member in err[-1]


def test_a_truncated_bundle_is_an_error_naming_the_member(icc_bundle, tmp_path):
    members = _members(icc_bundle)
    data = icc_bundle.read_bytes()
    cut = tmp_path / "cut.tar"
    info = members["seed0/stage2/ce/icc/predictions.h5"]
    cut.write_bytes(data[:info.offset_data + info.size // 2])  # inside the member's data
    with pytest.raises(BundleError, match="member 'seed0/stage2/ce/icc/predictions.h5': truncated"):
        extract_checked(cut, tmp_path / "a")
    nxt = members["seed0/stage2/ce/icc/metrics.json"]
    cut.write_bytes(data[:nxt.offset])  # at a member's header: the member and the rest are missing
    with pytest.raises(BundleError, match="member 'seed0/stage2/ce/icc/metrics.json' missing"):
        extract_checked(cut, tmp_path / "b")


def test_a_manifest_change_or_an_added_member_is_an_error(icc_bundle, tmp_path):
    d = tmp_path / "x"
    extract_checked(icc_bundle, d)
    extra = tmp_path / "extra.tar"
    shutil.copy(icc_bundle, extra)
    with tarfile.open(extra, "a") as tar:
        tar.add(d / "row.json", arcname="seed0/notes.txt")
    with pytest.raises(BundleError, match="member 'seed0/notes.txt' is not listed in MANIFEST.json"):
        extract_checked(extra, tmp_path / "y")


def test_a_metric_that_does_not_rescore_equal_is_reported(icc_bundle, tmp_path):
    from lmdlt.bundle import _rescore

    d = tmp_path / "x"
    manifest = extract_checked(icc_bundle, d)
    path = d / "seed0/stage2/ce/icc/metrics.json"
    record = json.loads(path.read_text())
    record["metrics"]["bacc"] += 0.01  # a number typed by hand
    path.write_text(json.dumps(record))
    problems = verify_problems(_rescore(d, manifest, None, 1))
    assert len(problems) == 1 and problems[0].startswith("seed 0 stage2 icc bacc: recorded")


def test_stale_results_are_refused_at_bundling(tiny_experiment, tmp_path):
    copy = tmp_path / "results" / "tiny"
    shutil.copytree(tiny_experiment, copy, ignore=shutil.ignore_patterns("tracking"))
    shutil.copytree(tiny_experiment.parent / "image_cache", tmp_path / "results" / "image_cache")
    config = yaml.safe_load((copy / "report/config.yaml").read_text())
    config["stage1"]["ce"]["lr"] = 0.2  # the config moved on since the run
    (copy / "report/config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(BundleError, match="seed 0: stage-1 config hash of model.pt: no"):
        make_bundle(copy, "ce", tmp_path / "b.tar")
    assert not (tmp_path / "b.tar").exists()


def test_rows_by_run_label_or_table_label(tiny_experiment):
    config = yaml.safe_load((tiny_experiment / "report/config.yaml").read_text())
    assert resolve_row(config, "ce/icc") == ("ce", "icc")
    assert resolve_row(config, "LMD w/o RRL") == ("ce", "icc")  # the paper table's label
    assert resolve_row(config, "ce + crt") == ("ce", "crt")     # case-insensitive label
    assert resolve_row(config, "ce") == ("ce", None)
    with pytest.raises(BundleError, match="no row 'rrl/icc'.*ce/crt"):
        resolve_row(config, "rrl/icc")


def _fit(name, params, train, val, stage1, k):
    import torch

    from lmdlt.config import validate_variant
    from lmdlt.stage2 import get_method

    cfg = validate_variant("stage2", {"method": name, "params": params})
    method = get_method(name)(cfg["params"], k)
    method.fit(train, val, stage1, torch.Generator().manual_seed(0))
    return method, cfg["params"]


@pytest.mark.parametrize("name", sorted(set(RESCORERS) - {"icc"}) + ["logit_adjust"])
def test_each_rescorer_gives_the_methods_own_logits(name):
    """Every stage-2 method's re-scorer, from the state saved beside its predictions, against
    the fitted method's own ``logits`` (ICC's classifier is the linear one of cRT and VFC)."""
    rng = np.random.default_rng(0)
    k, c = 4, 6
    labels = np.repeat(np.arange(k), [30, 15, 8, 5])
    feats = (rng.normal(size=(len(labels), c)) + labels[:, None]).astype(np.float32)
    stage1 = {"weight": rng.normal(size=(k, c)).astype(np.float32), "bias": rng.normal(size=k).astype(np.float32)}
    train = {"features": feats, "labels": labels, "logits": feats @ stage1["weight"].T + stage1["bias"]}
    val = {k_: v[::2] for k_, v in train.items()}
    small = {"epochs": 2, "batch_size": 16}
    params = {"crt": small, "lws": small, "gcl": small, "kd_rebalance": small, "cb_wd_max": small,
              "vfc": {"virtual_per_class": 10, "m_epochs": 1, "m_batch_size": 16}}.get(name, {})
    method, p = _fit(name, params, train, val, stage1, k)
    test = rng.normal(size=(20, c)).astype(np.float32)
    state = {n: np.asarray(v) for n, v in method.state().items()}
    got = stage2_logits(name, state, p, test, stage1, method.summary())
    np.testing.assert_allclose(got, method.logits(test), rtol=1e-5, atol=1e-5)


def test_without_images_verify_reads_an_image_cache_and_checks_every_split(tiny_experiment, tmp_path):
    out = make_bundle(tiny_experiment, "ce", tmp_path / "ce.tar", images="none")
    assert "images.h5" not in _members(out)
    with pytest.raises(BundleError, match="holds no images"):
        verify_bundle(out)
    cache = next((tiny_experiment.parent / "image_cache").glob("*/images_8px.h5"))
    result = verify_bundle(out, image_cache=cache)
    assert verify_problems(result) == []
    checks = [what for _, what, _, _ in result["checks"]]
    assert any("of the train split re-extracted" in c for c in checks)
