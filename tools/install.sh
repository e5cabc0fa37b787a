#!/usr/bin/env bash
# Creates the project's virtual environment (.venv) and installs everything into it, the checkout included:
#   tools/install.sh           core stack (requirements.txt), ONNX export (requirements-export.txt: onnx,
#                              onnxscript, onnxruntime) and the downstream stack (mmcv, mmdet, mmseg)
#   tools/install.sh --core    core stack only (classification, benchmarks)
# mmcv 2.1.0 has no registry wheel for recent torch, so it is built once from its sdist with its ops
# and kept in a wheel cache ($VHEAT_WHEEL_CACHE, default ~/.cache/vheat/wheels): later installs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/common.sh
[ $# -eq 0 ] || [ "$*" = "--core" ] || die "unknown arguments: $* (tools/install.sh [--core])"
venv=${VHEAT_VENV:-.venv}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade-strategy only-if-needed -r requirements.txt
# The one bootstrap of the checkout: the library as `vheat` (editable, pyproject.toml) and the repository root on the
# environment's path (vheat-checkout.pth), so that `python tools/.../x.py`, the tests and the configs' custom_imports
# import `classification`, `detection`, `segmentation` and `tools` from anywhere.
"$py" -m pip install -q --no-build-isolation --no-deps -e .
"$py" -c 'import sys, sysconfig; open(sysconfig.get_paths()["purelib"] + "/vheat-checkout.pth", "w").write(sys.argv[1] + "\n")' "$PWD"
[ "${1:-}" = "--core" ] && exit 0
"$py" -m pip install -q -r requirements-export.txt

if ! "$py" -c "import mmcv.ops" 2>/dev/null; then
  tag=$("$py" -c "import sys, torch; print('py%d%d-torch%s-%s' % (sys.version_info[:2] + (torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')))")
  cache="${VHEAT_WHEEL_CACHE:-$HOME/.cache/vheat/wheels}/$tag"
  if ! ls "$cache"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "Building mmcv 2.1.0 with its ops into $cache (10 to 15 minutes on 2 cores, once)"
    "$py" -m pip install -q wheel ninja
    mkdir -p "$cache"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "$py" -m pip wheel -q --no-build-isolation --no-deps -w "$cache" mmcv==2.1.0
  fi
  "$py" -m pip install -q "$cache"/mmcv-2.1.0-*.whl
fi
"$py" -m pip install -q -r requirements-downstream.txt
"$py" -c "import mmcv.ops, mmdet, mmseg; print('downstream stack ready: mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmseg', mmseg.__version__)"
