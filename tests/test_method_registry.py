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
    """get_method imports the module named like the method and nothing else, with no catalog
    look-up (the catalog is only the fallback for a method in a module of another name)."""
    code = ("import sys, lmdlt.catalog as c\n"
            "c.method_module = lambda *a: (_ for _ in ()).throw(AssertionError('catalog read'))\n"
            "from lmdlt.stage1 import get_method\n"
            "assert get_method('ce').name == 'ce'\n"
            "assert 'lmdlt.stage1.ce' in sys.modules and 'lmdlt.stage1.rrl' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
