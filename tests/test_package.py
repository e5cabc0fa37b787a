"""The installable library: a wheel built from the checkout holds `vheat` alone and works installed apart from the
checkout; an editable install (``pip install -e .``) serves the checkout's files. Each check runs in a fresh Python
started without site processing (``-S``) from a folder outside the repository: torch and timm come from this
environment's site-packages, whose .pth files (the checkout's own bootstrap, tools/install.sh) are left unread, so
that only the install under test can provide ``vheat``."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from conftest import FIXTURES, ROOT

# vHeat-T registered with timm, the official fixture's logits, the layer
CHECK = '''
import site, sys
sys.path.append({environment!r})
if {editable!r}:
    site.addsitedir({editable!r})
import timm, torch, vheat
io = torch.load({io!r})
kwargs = dict(io['kwargs'])
kwargs.pop('drop_path_rate')
model = timm.create_model('vheat_tiny', pretrained=True, **kwargs,
                          pretrained_cfg_overlay=dict(file={checkpoint!r}, num_classes=10)).eval()
with torch.no_grad():
    error = (model(io['input']) - io['logits']).abs().max().item()
tiny = timm.create_model('vheat_tiny')
tiny.infer_init()
shape = tuple(vheat.HeatConduction2d(8)(torch.randn(1, 8, 5, 7)).shape)
print(vheat.__file__, 'classification' in sys.modules, error, sum(p.numel() for p in tiny.parameters()), *shape)
'''


def _check(cwd, pythonpath: str = '', editable: str = ''):
    """(where vheat came from, whether the checkout's package was imported) after the checks in a fresh Python."""
    script = CHECK.format(environment=sysconfig.get_paths()['purelib'], editable=editable,
                          io=os.path.join(FIXTURES, 'official_vheat_mini_io.pt'),
                          checkpoint=os.path.join(FIXTURES, 'official_vheat_mini.pth'))
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    if pythonpath:
        env['PYTHONPATH'] = pythonpath
    result = subprocess.run([sys.executable, '-S', '-c', script], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    location, imported_checkout, error, params, *shape = result.stdout.split()
    assert float(error) <= 1e-4, error
    assert round(int(params) / 1e6, 2) == 29.56 and shape == ['1', '8', '5', '7']  # vHeat-T, as published
    return location, imported_checkout == 'True'


def _checkout_copy(destination: str) -> str:
    """The checkout's files (tracked, and new ones not ignored), as a clone has them."""
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.join(destination, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(destination, name))
    return destination


def test_the_wheel_holds_the_library_alone_and_works_apart_from_the_checkout(tmp_path, capsys):
    source = _checkout_copy(str(tmp_path / 'checkout'))
    built = subprocess.run([sys.executable, '-m', 'build', '--wheel', '--no-isolation', '--outdir',
                            str(tmp_path / 'dist'), source], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel, = (tmp_path / 'dist').glob('vheat-*.whl')
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    with capsys.disabled():
        print('\n'.join(['', f'{wheel.name}:'] + names))
    library = sorted(f'vheat/{name}' for name in os.listdir(os.path.join(ROOT, 'classification', 'models'))
                     if name.endswith('.py'))
    assert sorted(n for n in names if not n.startswith('vheat-1.0.0.dist-info/')) == library
    assert 'vheat-1.0.0.dist-info/licenses/LICENSE' in names
    metadata = archive.read('vheat-1.0.0.dist-info/METADATA').decode()
    assert 'License-Expression: Apache-2.0' in metadata
    assert sorted(line for line in metadata.splitlines() if line.startswith('Requires-Dist:') and 'extra' not in
                  line) == ['Requires-Dist: timm>=1.0.26', 'Requires-Dist: torch>=2.6']
    target = tmp_path / 'site'
    installed = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', '--target',
                                str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    (tmp_path / 'elsewhere').mkdir()
    location, imported_checkout = _check(str(tmp_path / 'elsewhere'), pythonpath=str(target))
    assert location == str(target / 'vheat' / '__init__.py') and not imported_checkout


def test_an_editable_install_serves_the_checkout(tmp_path):
    """``pip install -e .`` into a prefix of its own; its finder maps ``vheat`` to classification/models."""
    prefix = tmp_path / 'prefix'
    installed = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
                                '--ignore-installed',  # else pip would remove tools/install.sh's own install
                                '--prefix', str(prefix), '-e', ROOT], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    site = sysconfig.get_paths(vars={'base': str(prefix), 'platbase': str(prefix)})['purelib']
    assert any(name.startswith('__editable__') for name in os.listdir(site))
    (tmp_path / 'elsewhere').mkdir()
    location, imported_checkout = _check(str(tmp_path / 'elsewhere'), editable=site)
    assert location == os.path.join(ROOT, 'classification', 'models', '__init__.py') and not imported_checkout
