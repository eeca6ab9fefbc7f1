"""benchmarks/gpu_check.py, the one-command GPU check, at its tiny CPU sizes: every section
runs and the JSON holds its figures, so the script cannot rot between GPU sessions."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_runs_every_section_on_the_cpu_at_tiny_sizes(tmp_path):
    out = tmp_path / "check.json"
    assert _gpu_check().main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    s = report["sections"]
    assert report["size"] == "tiny" and report["environment"]["device"] == "cpu"
    assert set(s) == {"train", "data", "extract", "vfc", "icc"} and not any("error" in r for r in s.values())
    for variant in ("fp32", "bf16", "bf16_channels_last", "bf16_channels_last_cudnn_benchmark",
                    "rrl_step_bf16_channels_last"):
        assert s["train"][variant]["images_per_s"] > 0 and s["train"][variant]["peak_memory_mb"] > 0
    for method in ("ce", "rrl", "supcon"):
        row = s["data"][method]
        assert row["loader_images_per_s_per_core"] > 0 and row["batched_device_images_per_s"] > 0
        assert row["cpu_cores_to_feed_the_step"] == pytest.approx(
            row["training_step_images_per_s"] / row["loader_images_per_s_per_core"], abs=0.06)
    assert s["extract"]["images_per_s"] > 0
    assert s["vfc"]["virtual_features"] == 50 * 3 and s["vfc"]["sgd_steps"] == 1
    assert s["icc"]["seconds"] > 0 and s["icc"]["m_seconds"] > 0


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    mod = _gpu_check()

    def broken(size, dev):
        raise RuntimeError("out of memory (simulated)")
    monkeypatch.setattr(mod, "section_extract", broken)
    out = tmp_path / "check.json"
    assert mod.main(["--device", "cpu", "--tiny", "--sections", "extract,vfc", "--out", str(out)]) == 1
    s = json.loads(out.read_text())["sections"]
    assert "out of memory (simulated)" in s["extract"]["error"] and s["vfc"]["sgd_steps"] == 1
