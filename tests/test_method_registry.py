"""The one registry mechanism of both stages (lmdlt.method_registry)."""
import subprocess
import sys

import pytest

from conftest import REPO
from lmdlt import stage1, stage2


@pytest.mark.parametrize("stage", [stage1, stage2])
def test_every_method_is_registered_under_its_name(stage):
    names = stage.available_methods()
    assert names and all(stage.get_method(n).name == n for n in names)


@pytest.mark.parametrize("stage, label", [(stage1, "stage-1"), (stage2, "stage-2")])
def test_unknown_and_twice_registered_names_are_errors(stage, label):
    with pytest.raises(ValueError, match=rf"unknown {label} method 'nope' \(known: .*\bce\b"
                       if stage is stage1 else rf"unknown {label} method 'nope' \(known: .*\bcrt\b"):
        stage.get_method("nope")
    taken = stage.available_methods()[0]
    with pytest.raises(ValueError, match=rf"{label} method '{taken}' registered twice"):
        stage.register(taken)(type("Dup", (), {}))


def test_a_method_is_found_by_its_module_name_without_the_catalog():
    """get_method imports the module named like the method and nothing else; the registry never
    imports the catalog (the catalog depends on the registries, not the reverse)."""
    code = ("import sys\n"
            "from lmdlt.stage1 import get_method\n"
            "assert get_method('ce').name == 'ce'\n"
            "assert 'lmdlt.stage1.ce' in sys.modules and 'lmdlt.stage1.rrl' not in sys.modules\n"
            "assert 'lmdlt.catalog' not in sys.modules, 'the registry imported the catalog'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_method_in_a_module_of_another_name_is_found(tmp_path, monkeypatch):
    """A method whose module is not named after it is found by importing every module."""
    pkg = tmp_path / "toy_methods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text(
        "from pathlib import Path\n"
        "from lmdlt.method_registry import MethodRegistry\n"
        "METHODS = MethodRegistry('stage9', 'toy_methods', Path(__file__).parent, {'base'})\n")
    (pkg / "several.py").write_text(
        "from .base import METHODS\n\n\n@METHODS.register('first')\nclass First:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from toy_methods.base import METHODS

    from lmdlt.method_registry import loaded

    assert loaded("stage9") is METHODS and "first" not in METHODS.classes
    assert METHODS.get("first").name == "first"
    with pytest.raises(ValueError, match=r"unknown stage-9 method 'second' \(known: first\)"):
        METHODS.get("second")
