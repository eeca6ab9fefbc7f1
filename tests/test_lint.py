"""Snakemake's conventions and the documentation site's structure: `snakemake --lint` finds
nothing, every rule names the conda environment (workflow/envs/lmdlt.yaml), that environment
holds pyproject.toml's dependencies and its post-deploy script installs the checkout, the
workflow catalog file is complete, every docs page is in the site's nav and every lmdlt module
in the API reference. (`mkdocs build --strict` itself runs in .ci/run, with the docs extra.)"""
from __future__ import annotations

import os
import pkgutil
import re
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import run_snakemake

import lmdlt

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "workflow" / "rules"
ENV = REPO / "workflow" / "envs" / "lmdlt.yaml"
POST_DEPLOY = REPO / "workflow" / "envs" / "lmdlt.post-deploy.sh"
# pyproject (PyPI) name -> conda-forge name, where they differ
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
# not needed inside a rule's environment: lmdlt imports no snakemake (the workflow's own process
# runs it), checked below
OUTSIDE_RULES = {"snakemake"}


def test_snakemake_lint_finds_nothing(tmp_path):
    proc = run_snakemake(tmp_path, "--lint", "--configfile", str(REPO / "config.yaml"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Congratulations, your workflow is in a good condition" in out, out[-6000:]


def _rules() -> dict[str, str]:
    """{rule name: its text} of every rule in the Snakefile and workflow/rules/*.smk."""
    out = {}
    for path in [REPO / "Snakefile", *sorted(RULES.glob("*.smk"))]:
        text = path.read_text()
        for m in re.finditer(r"^( *)(?:local)?rule (\w+):\n((?:\1 +.*\n|\s*\n)*)", text, re.M):
            out[f"{path.name}:{m.group(2)}"] = m.group(3)
    return out


def test_every_rule_with_a_command_names_the_lmdlt_environment():
    rules = _rules()
    assert len(rules) > 10
    for name, body in rules.items():
        if "shell:" not in body:
            continue
        m = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
        assert m, f"{name}: no conda: directive"
        assert (RULES / m.group(1)).resolve() == ENV, f"{name}: conda: {m.group(1)}"


def _requirement(spec: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*(.*?)\s*$", spec)
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_the_environment_holds_the_package_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {}
    for spec in project["dependencies"]:
        name, version = _requirement(spec)
        if name not in OUTSIDE_RULES:
            wanted[CONDA_NAMES.get(name, name)] = version
    env = yaml.safe_load(ENV.read_text())
    assert env["channels"][0] == "conda-forge"
    have = dict(_requirement(d) for d in env["dependencies"] if isinstance(d, str))
    assert {k: have.get(k) for k in wanted} == wanted
    assert have["python"].startswith(project["requires-python"])  # the same oldest Python
    assert {"pip", "setuptools", "wheel"} <= set(have)  # the post-deploy's editable build


def test_lmdlt_imports_no_snakemake():
    for path in Path(lmdlt.__file__).parent.rglob("*.py"):
        assert not re.search(r"^\s*(import|from) snakemake", path.read_text(), re.M), path


def _post_deploy(tmp_path: Path, source: str | None) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the post-deploy script with a `python` on PATH that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "argv.txt"
    (bin_dir / "python").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    (bin_dir / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "LMDLT_SOURCE"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    if source is not None:
        env["LMDLT_SOURCE"] = source
    proc = subprocess.run(["bash", str(POST_DEPLOY)], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    return proc, record


def test_post_deploy_installs_the_checkout_editable_without_dependencies(tmp_path):
    assert POST_DEPLOY.stat().st_mode & stat.S_IXUSR
    proc, record = _post_deploy(tmp_path, str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert record.read_text().split("\n")[:-1] == [
        "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--editable", str(REPO)]


@pytest.mark.parametrize("source, message", [
    (None, "LMDLT_SOURCE is not set"), ("/", "LMDLT_SOURCE=/ is not an lmdlt checkout")])
def test_post_deploy_refuses_a_missing_or_wrong_source(tmp_path, source, message):
    proc, record = _post_deploy(tmp_path, source)
    assert proc.returncode != 0 and message in proc.stderr and not record.exists()


def test_the_workflow_names_its_checkout_and_runs_conda_jobs_in_their_environment():
    """The post-deploy script learns the checkout from LMDLT_SOURCE; with --sdm conda the job
    server (a fork of the workflow's own environment) is off, so jobs run in the rules' one."""
    common = (RULES / "common.smk").read_text()
    assert 'os.environ.setdefault("LMDLT_SOURCE", workflow.basedir)' in common
    assert re.search(r"DeploymentMethod\.CONDA in workflow\.deployment_settings\.deployment_method:\n"
                     r"\s+os\.environ\[ENV_DISABLE\] = \"1\"", common)
    assert common.index("os.environ[ENV_DISABLE]") < common.index("JOB_SERVER.launch(")


def test_the_workflow_catalog_file():
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    usage = catalog["usage"]
    assert usage["software-stack-deployment"]["conda"] is True
    assert usage["software-stack-deployment"]["report"] is True
    assert set(usage["mandatory-flags"]) == {"desc", "flags"}


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


class _Loader(yaml.SafeLoader):
    """mkdocs.yml may carry !!python/name tags (Material's emoji); this test reads the nav."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def test_every_docs_page_is_in_the_nav_once():
    site = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=_Loader)
    pages = _nav_pages(site["nav"])
    docs = REPO / site.get("docs_dir", "docs")
    assert len(pages) == len(set(pages))
    assert sorted(pages) == sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md"))
    groups = [next(iter(item)) for item in site["nav"]]
    assert groups == ["Getting started", "Guides", "Methods", "Reference", "Results"]


def test_every_lmdlt_module_is_in_the_api_reference():
    """A module is documented when a docs/api page renders it (`::: lmdlt.x`) or a package
    above it with show_submodules."""
    rendered, with_submodules, twice = set(), set(), []
    for page in (REPO / "docs" / "api").glob("*.md"):
        for m in re.finditer(r"^::: (lmdlt[\w.]*)\n((?:    .*\n)*)", page.read_text(), re.M):
            if m.group(1) in rendered:  # two anchors for one object: mkdocs --strict refuses it
                twice.append(m.group(1))
            rendered.add(m.group(1))
            if "show_submodules: true" in m.group(2):
                with_submodules.add(m.group(1))
    missing = []
    for info in pkgutil.walk_packages(lmdlt.__path__, "lmdlt."):
        name = info.name
        if name == "lmdlt.__main__" or name in rendered:
            continue
        if not any(name.startswith(p + ".") for p in with_submodules):
            missing.append(name)
    assert not missing, f"add to a docs/api page: {missing}"
    assert not twice, f"rendered on two docs/api pages: {twice}"
