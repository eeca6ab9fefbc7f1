"""Imports cost only what a job needs (docs/imports.md): the workflow's parse imports no torch
(method names and schemas come from ``lmdlt.catalog``), a stage-1 job imports its own method's
module only and torchvision only when a configured transform or model needs it; the registries
and the catalog import each other in one direction and read no private name of another module.

Each check runs in a fresh interpreter (``sys.modules`` of this pytest process holds torch
already), with ``LMDLT_CACHE_DIR`` pointing at a temporary catalog cache.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import REPO

HEAVY = ("torch", "torchvision", "torch._dynamo")


def run_py(code: str, env: dict | None = None, cwd: Path = REPO, path: Path | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last, which is returned."""
    full = {**os.environ, **(env or {})}
    if path is not None:  # a copy of the package, found before the editable install
        full["PYTHONPATH"] = f"{path}{os.pathsep}{full.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=cwd, env=full)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


REPORT = """
import json, sys
print(json.dumps({"heavy": [m for m in %r if m in sys.modules],
                  "lmdlt": sorted(m for m in sys.modules if m.startswith("lmdlt.")), **OUT}))
""" % (HEAVY,)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict:
    """A catalog cache directory, built once (by a process that may import torch)."""
    env = {"LMDLT_CACHE_DIR": str(tmp_path_factory.mktemp("catalog-cache"))}
    run_py("from lmdlt.catalog import current; current(); OUT = {}" + REPORT, env)
    return env


PARSE = """
import yaml
from lmdlt.config import ConfigError, check_data_root, pairs, row_label, validate_config
from lmdlt.stamps import write_params_stamp
from lmdlt.data.image_cache import cache_dir_name
from lmdlt.report.targets import ReportTargets
from lmdlt.catalog import current

config = yaml.safe_load(open("config.yaml"))
validate_config(config)
check_data_root(config)
cache_dir_name(config["dataset"])
catalog = current()  # common.smk's _stage2_variants
encoder = [n for n, v in config["stage2"].items()
           if catalog.get_method("stage2", v["method"]).needs_encoder]
s1, s2 = "r/seed{seed}/stage1/{s1}", "r/seed{seed}/stage2/{s1}/{s2}"
paths = {"stage1_metrics": s1 + "/metrics.json", "features": s1 + "/features.h5",
         "stage2_metrics": s2 + "/metrics.json", "predictions": s2 + "/predictions.h5",
         "stage2_benchmark": "b/seed{seed}/{s1}_{s2}.tsv", "split": "r/seed{seed}/split.parquet"}
ReportTargets(config, paths).final_outputs()  # common.smk's REPORT, get_final_output()
OUT = {"encoder_variants": encoder, "pairs": len(pairs(config))}
"""


def test_workflow_helpers_import_no_torch(cache):
    """What common.smk imports and calls at parse time, on the default config."""
    out = run_py(PARSE + REPORT, cache)
    assert out["heavy"] == [], f"the workflow's parse imports {out['heavy']}: {out['lmdlt']}"
    assert not any(m.startswith(("lmdlt.stage1.", "lmdlt.stage2.", "lmdlt.models")) for m in out["lmdlt"])
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert "icc" in out["encoder_variants"] and "crt" not in out["encoder_variants"]
    assert set(out["encoder_variants"]) <= set(config["stage2"])


def test_snakemake_dry_run_imports_no_torch(cache, tmp_path):
    """The real parse: ``snakemake -n`` of the default config (its data is embedded), run in
    this interpreter so that its ``sys.modules`` can be read afterwards."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    code = f"""
    from snakemake.cli import main
    try:
        main(["-s", {str(REPO / "Snakefile")!r}, "--directory", {str(tmp_path)!r}, "-n",
              "--workflow-profile", "none", "--cores", "1", "--quiet", "rules"])
    except SystemExit as e:
        code = e.code
    OUT = {{"code": code}}
    """
    out = run_py(textwrap.dedent(code) + REPORT, cache)
    assert out["code"] in (0, None)
    assert out["heavy"] == [], f"snakemake -n imports {out['heavy']}: {out['lmdlt']}"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import statement of a source file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            out.append((module, [a.name for a in node.names]))
    return out


def test_registries_and_catalog_import_one_way_and_read_no_private_names():
    """lmdlt.method_registry imports nothing of lmdlt (the stage packages and the catalog import
    it); the catalog and the report modules import no private name of another module and read
    none through a module (``base._REGISTRY``)."""
    registry = REPO / "lmdlt" / "method_registry.py"
    assert [m for m, _ in _imports(registry) if m.startswith("lmdlt")] == []
    checked = [REPO / "lmdlt" / "catalog.py", registry, *sorted((REPO / "lmdlt" / "report").glob("*.py"))]
    for path in checked:
        private = [f"{m}.{n}" for m, names in _imports(path) if m.startswith("lmdlt")
                   for n in names if n.startswith("_")]
        assert private == [], f"{path.name} imports private names {private}"
        # a private attribute is read only on the object's own class (self, cls)
        reads = [ast.unparse(n) for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Attribute) and n.attr.startswith("_")
                 and not n.attr.startswith("__") and getattr(n.value, "id", None) not in ("self", "cls")]
        reads += [f"getattr(..., {a.value!r})" for n in ast.walk(ast.parse(path.read_text()))
                  if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "getattr"
                  for a in n.args[1:2] if isinstance(a, ast.Constant) and str(a.value).startswith("_")]
        assert reads == [], f"{path.name} reads private names {reads}"


def test_docs_imports_names_modules_that_exist():
    """docs/imports.md's module names are the package's (a renamed module fails here)."""
    text = (REPO / "docs" / "imports.md").read_text()
    names = set(re.findall(r"`(lmdlt(?:\.[a-z_0-9]+)+)", text))
    assert len(names) > 10
    for name in sorted(names):
        parts = name.split(".")
        candidates = [REPO.joinpath(*parts).with_suffix(".py"), REPO.joinpath(*parts, "__init__.py")]
        # a name may end in an attribute (lmdlt.job_server.PRELOAD)
        candidates += [REPO.joinpath(*parts[:-1]).with_suffix(".py")]
        assert any(c.is_file() for c in candidates), f"docs/imports.md names {name}"


STAGE1 = """
import sys, torch
import lmdlt.stage1.trainer  # what `lmdlt train-stage1` imports
from lmdlt.stage1 import get_method
from lmdlt.models import build_network
m = get_method("ce")({"label_smoothing": 0.0}, [5, 3])
net = build_network({"arch": "small_resnet", "width": 4}, 1, 2, [0.5], [0.25])
x = torch.zeros(1, 8, 8, dtype=torch.uint8)
assert m.train_transform(%s, 8)(x).shape == x.shape
OUT = {"rrl": "lmdlt.stage1.rrl" in sys.modules}
"""


def test_stage1_small_resnet_imports_no_torchvision(cache):
    """A CE job on small_resnet without augmentation needs no torchvision; with a random crop
    it does (the control: the check sees torchvision when it is there)."""
    out = run_py(STAGE1 % "{}" + REPORT, cache)
    assert "torchvision" not in out["heavy"] and "torch" in out["heavy"]
    assert not out["rrl"]  # only the job's own method module (rrl imports torchvision)
    assert "lmdlt.stage1.ce" in out["lmdlt"] and "lmdlt.stage1.ldam" not in out["lmdlt"]
    out = run_py(STAGE1 % '{"crop_padding": 1}' + REPORT, cache)
    assert "torchvision" in out["heavy"]


def test_identity_transform_is_v2_identity():
    """The torchvision-free no-augmentation transform returns what ``v2.Identity`` returns."""
    import pickle

    import torch
    from torchvision.transforms import v2

    from lmdlt.data.transforms import train_transform

    t = train_transform({"crop_padding": 0, "hflip": False}, 8)
    x, y = torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8), torch.ones(2)
    assert t(x) is v2.Identity()(x) is x
    assert t(x, y) == v2.Identity()(x, y) == (x, y)
    assert v2.Compose([t, v2.RandomHorizontalFlip(p=1.0)])(x).equal(x.flip(-1))
    assert pickle.loads(pickle.dumps(t))(x) is x  # DataLoader workers


def test_catalog_matches_the_registries(tmp_path, monkeypatch):
    """Read back from disk, every method's params, schema and needs_encoder are the class's,
    and the encoder and sampler names are the registries'."""
    from lmdlt import catalog
    from lmdlt.data.samplers import available_samplers
    from lmdlt.models import available_encoders
    from lmdlt.stage1 import available_methods as methods1, get_method as get1
    from lmdlt.stage2 import available_methods as methods2, get_method as get2

    monkeypatch.setenv("LMDLT_CACHE_DIR", str(tmp_path))
    catalog.current()  # built and written
    (f,) = tmp_path.glob("catalog-*.json")
    cat = catalog.Catalog(json.loads(f.read_text()))
    for stage, names, get in (("stage1", methods1(), get1), ("stage2", methods2(), get2)):
        assert cat.available_methods(stage) == names
        for name in names:
            entry, cls = cat.data[stage][name], get(name)
            assert entry["params"] == cls.params and entry["schema"] == cls.params_schema(), name
            assert entry["module"] == cls.__module__
            if stage == "stage2":
                assert entry["needs_encoder"] == cls.needs_encoder, name
    assert cat.data["encoders"] == available_encoders()
    assert cat.data["samplers"] == available_samplers()
    with pytest.raises(ValueError, match=r"unknown stage-2 method 'nope' \(known: .*crt"):
        cat.get_method("stage2", "nope")


def test_a_catalog_under_another_key_is_never_read(tmp_path, monkeypatch):
    """A file whose recorded key is not the current one (or unreadable) is rebuilt."""
    from lmdlt import catalog

    monkeypatch.setenv("LMDLT_CACHE_DIR", str(tmp_path))
    key = catalog.source_key()
    path = tmp_path / f"catalog-{key[:32]}.json"
    stale = {"format": catalog.FORMAT, "key": "0" * 64, "encoders": [], "samplers": [],
             "stage1": {}, "stage2": {}}
    for text in (json.dumps(stale), "{not json"):
        catalog._load.cache_clear()
        path.write_text(text)
        assert "ce" in catalog.current().available_methods("stage1")
        assert json.loads(path.read_text())["key"] == key


@pytest.mark.slow  # three catalog builds in fresh interpreters: ~20 s
def test_an_edited_or_new_method_file_rebuilds_the_catalog(tmp_path):
    """In a copy of the package: a changed params default and a new method module are seen by
    the next parse with no extra step (the key hashes every package source)."""
    pkg = tmp_path / "pkg"
    shutil.copytree(REPO / "lmdlt", pkg / "lmdlt", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"LMDLT_CACHE_DIR": str(tmp_path / "cache")}
    probe = """
    import lmdlt, sys
    from lmdlt.config import validate_variant, validate_config
    from lmdlt.catalog import current
    cat = current()
    ce = cat.get_method("stage1", "ce").params["label_smoothing"]["default"]
    OUT = {"file": lmdlt.__file__, "ce": ce, "new": "zz_new" in cat.available_methods("stage1")}
    """
    out = run_py(textwrap.dedent(probe) + REPORT, env, cwd=tmp_path, path=pkg)
    assert out["file"].startswith(str(pkg)) and out["ce"] == 0.0 and not out["new"]

    ce = pkg / "lmdlt" / "stage1" / "ce.py"
    text = ce.read_text()
    assert text.count('"default": 0.0') == 1
    ce.write_text(text.replace('"default": 0.0', '"default": 0.25'))
    (pkg / "lmdlt" / "stage1" / "zz_new.py").write_text(textwrap.dedent('''
        from .base import register
        from .ce import CrossEntropy

        @register("zz_new")
        class New(CrossEntropy):
            params = {"alpha": {"type": "number", "default": 2.0}}
    '''))
    check = """
    import yaml
    config = yaml.safe_load(open(%r))
    config["stage1"]["zz"] = {**config["stage1"]["ce"], "method": "zz_new", "params": {}}
    validate_config(config, %r)
    OUT["zz"] = config["stage1"]["zz"]["params"]
    """ % (str(REPO / "config.yaml"), str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    out = run_py(textwrap.dedent(probe + check) + REPORT, env, cwd=tmp_path, path=pkg)
    assert out["ce"] == 0.25 and out["new"] and out["zz"] == {"alpha": 2.0}
    assert "torch" in out["heavy"]  # the rebuild imported the registries
    out = run_py(textwrap.dedent(probe) + REPORT, env, cwd=tmp_path, path=pkg)  # read back
    assert out["ce"] == 0.25 and out["new"] and out["heavy"] == []
    assert len(list((tmp_path / "cache").glob("catalog-*.json"))) == 2


def test_setup_torch_is_deterministic_without_importing_dynamo():
    """lmdlt.runtime.setup_torch: deterministic kernels (warn-only), as
    torch.use_deterministic_algorithms gives, without its ~2 s import of torch._dynamo."""
    code = ("import sys, torch\n"
            "from lmdlt.runtime import setup_torch\n"
            "setup_torch(0, 1)\n"
            "assert torch.are_deterministic_algorithms_enabled()\n"
            "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
            "assert 'torch._dynamo' not in sys.modules, 'dynamo imported'\n"
            "import torch._inductor.config as c\n"
            "torch.use_deterministic_algorithms(False)\n"
            "setup_torch(0, 1)\n"
            "assert c.deterministic is True\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
