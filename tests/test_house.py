"""The layers of the house hold: import-linter's contracts (pyproject.toml) pass and catch a forbidden import, no
file puts folders on sys.path, every error of bad input derives from one class that one place catches, and one
function finds a checkpoint's state dict; the library's tests need torch, timm and pytest alone, and the files the
suite starts first exist."""
import ast
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from classification.models import VHeatError, find_state_dict
from conftest import ROOT

LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), 'lint-imports')
PACKAGES = ('classification', 'detection', 'segmentation', 'tools')


def _lint(root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=root, COLUMNS='300')  # one line a contract
    return subprocess.run([LINT_IMPORTS, '--no-cache'], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def _python_files(*folders):
    return [path for folder in folders for path in glob.glob(os.path.join(ROOT, folder, '**', '*.py'),
                                                              recursive=True)]


def test_import_contracts_are_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r'Contracts: (\d+) kept, 0 broken', result.stdout)


@pytest.mark.parametrize('module,line,contract', [
    ('classification/models/dct.py', 'import classification.engine.trainer', 'Layers'),
    ('classification/models/dct.py', 'import mmengine', 'The library imports nothing else'),
    ('classification/data/build.py', 'import mmdet', 'Only classification.mm'),
    ('tools/misc/predict.py', 'import tools.deployment.export_onnx', 'A tool imports the library'),
    ('classification/data/seeding.py', 'from classification.data import build', 'No import cycle'),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
    """A copy of the tree with one forbidden import added: lint-imports fails, naming the contract."""
    for package in PACKAGES:
        shutil.copytree(os.path.join(ROOT, package), tmp_path / package,
                        ignore=shutil.ignore_patterns('__pycache__', 'configs', '*.pth'))
    shutil.copy(os.path.join(ROOT, 'pyproject.toml'), tmp_path)
    assert _lint(str(tmp_path)).returncode == 0
    with open(tmp_path / module, 'a') as f:
        f.write(f'\n{line}  # added by the test\n')
    result = _lint(str(tmp_path))
    assert result.returncode != 0
    broken = re.findall(r'^(.+?) BROKEN$', result.stdout, re.M)
    assert any(name.startswith(contract) for name in broken), result.stdout[-3000:]
    assert re.search(r'Contracts: \d+ kept, [1-9]\d* broken', result.stdout)


def test_no_file_puts_folders_on_the_import_path():
    """tools/ and tests/ import the project through its installation (tools/install.sh) or pytest's pythonpath;
    only the two official entry points run as plain scripts keep a guarded bootstrap."""
    offenders = []
    for path in _python_files('tools', 'tests', 'classification', 'detection', 'segmentation'):
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ('insert', 'append') and \
                    ast.unparse(node.value) == 'sys.path':
                offenders.append(os.path.relpath(path, ROOT))
    assert sorted(offenders) == ['classification/interpolate4downstream.py', 'classification/main.py']


def _error_classes():
    """{class name: its base names} of every exception class the project defines (read from the source, so that
    modules of optional stacks need not be importable)."""
    classes = {}
    for path in _python_files('classification', 'tools', 'detection', 'segmentation'):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = [ast.unparse(b).rsplit('.', 1)[-1] for b in node.bases]
    builtin = {'Exception', 'RuntimeError', 'ValueError', 'OSError', 'TypeError', 'KeyError'}

    def is_error(name, seen=()):
        return name in builtin or (name in classes and name not in seen and
                                   any(is_error(b, seen + (name,)) for b in classes[name]))
    return {name: bases for name, bases in classes.items() if any(is_error(b) for b in bases)}


def test_every_error_of_bad_input_derives_from_one_class():
    errors = _error_classes()

    def rooted(name):
        return name == 'VHeatError' or any(rooted(b) for b in errors.get(name, ()))
    assert len(errors) >= 10
    assert issubclass(VHeatError, Exception)
    assert sorted(name for name in errors if not rooted(name)) == ['Preempted']  # a stop signal, not bad input


def test_one_place_catches_them():
    """Only classification/core/cli.py catches the base class; no module keeps a list of the project's errors."""
    names = set(_error_classes()) | {'BAD_INPUT'}
    catches = {}
    for path in _python_files('classification', 'tools', 'detection', 'segmentation'):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node.type)
                          if isinstance(n, (ast.Name, ast.Attribute))} & names
                if caught:
                    catches.setdefault(os.path.relpath(path, ROOT), []).append(sorted(caught))
    assert catches.pop('classification/core/cli.py') == [['BAD_INPUT']]
    lists = {path: c for path, c in catches.items() if any(len(names) > 1 for names in c)}
    assert not lists  # a single error is still handled where it means something (a rank-0 read), never a list


def test_one_function_finds_the_state_dict():
    weights = {'stem.conv1.weight': 1}
    assert find_state_dict({'model': weights, 'model_ema': {'x': 2}}) == weights
    assert find_state_dict({'model': weights, 'model_ema': {'x': 2}}, 'model_ema') == {'x': 2}
    assert find_state_dict({'state_dict': weights, 'meta': {}}) == weights
    assert find_state_dict(weights) == weights
    with pytest.raises(VHeatError, match=r"f.pth holds no 'model_ema' weights \(its keys: model, model_ema\)"):
        find_state_dict({'model': weights, 'model_ema': None}, 'model_ema', 'f.pth')
    with pytest.raises(VHeatError, match="'model' holds a int, not a state dict"):
        find_state_dict({'model': 5})
    lookups = [os.path.relpath(path, ROOT) for path in _python_files('classification', 'tools')
               if re.search(r"\.get\('(model|model_ema|state_dict)', ", open(path).read())]
    assert lookups == []


def _imported_top_levels(path: str) -> set:
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split('.')[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
        elif isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == 'importorskip':
            names.add(node.args[0].value.split('.')[0])
    return names


def test_the_library_tests_need_torch_timm_and_pytest_alone():
    """tests/library (and the conftest they share) import the library as ``vheat``, torch, timm (torchvision and
    safetensors being timm's own dependencies), pytest and the standard library: what the minimum environment of
    .ci/run installs."""
    allowed = {'vheat', 'torch', 'torchvision', 'safetensors', 'timm', 'pytest', 'conftest'} | set(
        sys.stdlib_module_names)
    found = {os.path.relpath(path, ROOT): sorted(_imported_top_levels(path) - allowed)
             for path in _python_files('tests/library') + [os.path.join(ROOT, 'tests', 'conftest.py')]}
    assert len(found) >= 6 and not any(found.values()), found


def test_the_house_check_of_the_library_tests_finds_another_import(tmp_path):
    path = tmp_path / 'test_x.py'
    path.write_text('import torch\nfrom classification.models import vHeat\nnp = __import__("pytest").importorskip('
                    '"numpy")\n')
    assert _imported_top_levels(str(path)) == {'torch', 'classification', 'numpy'}


def test_the_files_started_first_exist():
    """conftest.LONG_FILES orders the suite for its workers; a renamed file would silently drop out of it."""
    from conftest import LONG_FILES
    assert [name for name in LONG_FILES if not os.path.isfile(os.path.join(ROOT, 'tests', name))] == []
