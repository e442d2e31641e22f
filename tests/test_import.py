"""Every public name is importable, documented and listed once."""

from __future__ import annotations

import inspect
import subprocess
import sys

import modeconn_unlearn as mcu


def test_every_public_name_resolves_and_has_a_docstring() -> None:
    assert len(mcu.__all__) == len(set(mcu.__all__))
    for name in mcu.__all__:
        obj = getattr(mcu, name)
        if name == "__version__":
            assert isinstance(obj, str) and obj.count(".") == 2
            continue
        assert inspect.getdoc(obj), f"{name} has no docstring"


def test_importing_the_library_does_not_import_matplotlib() -> None:
    code = (
        "import sys, modeconn_unlearn, modeconn_unlearn.connectivity, modeconn_unlearn.datasets, "
        "modeconn_unlearn.zoo; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_are_value_errors() -> None:
    assert issubclass(mcu.ModeConnError, ValueError)
    assert issubclass(mcu.IncompatibleModelsError, mcu.ModeConnError)
    assert issubclass(mcu.NonFiniteLossError, mcu.ModeConnError)


def test_module_paths_of_0_2_still_import_the_moved_modules() -> None:
    from modeconn_unlearn.curve import CurveModel
    from modeconn_unlearn.curve.coefficients import bezier
    from modeconn_unlearn.selection.search import search_path

    assert CurveModel is mcu.CurveModel and search_path is mcu.search_path
    assert bezier is mcu.curve.bezier
    code = (
        "import modeconn_unlearn.curve_points as p, modeconn_unlearn.curve_bends as b, "
        "modeconn_unlearn.curve_endpoints as e; "
        "assert (p.__name__, b.__name__, e.__name__) == ('modeconn_unlearn.curve.points', "
        "'modeconn_unlearn.curve.bends', 'modeconn_unlearn.curve.endpoints')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    for old, new in mcu.MOVED_MODULES.items():
        assert sys.modules[f"modeconn_unlearn.{old}"] is sys.modules[f"modeconn_unlearn.{new}"]
