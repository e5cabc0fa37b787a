#!/usr/bin/env bash
# Creates the project's virtual environment (.venv) and installs everything into it, the checkout included:
#   tools/install.sh           core stack (requirements.txt), ONNX export (requirements-export.txt: onnx,
#                              onnxscript, onnxruntime) and the downstream stack (mmcv, mmdet, mmseg)
#   tools/install.sh --core    core stack only (classification, benchmarks)
#   --keep-torch               (with either) leave the environment's torch and torchvision as they are: for an
#                              existing environment ($VHEAT_VENV) whose torch is newer than requirements.txt's pin
# mmcv 2.1.0 has no registry wheel for recent torch, so it is built once from its sdist with its ops
# and kept in a wheel cache ($VHEAT_WHEEL_CACHE, default ~/.cache/vheat/wheels): later installs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/common.sh
core=0 keep_torch=0
for arg in "$@"; do
  case "$arg" in
    --core) core=1 ;;
    --keep-torch) keep_torch=1 ;;
    *) die "unknown arguments: $arg (tools/install.sh [--core] [--keep-torch])" ;;
  esac
done
venv=${VHEAT_VENV:-.venv}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
py="$venv/bin/python"
requirements=requirements.txt
if [ "$keep_torch" = 1 ]; then
  "$py" -c "import torch, torchvision" 2>/dev/null || die "--keep-torch: $venv has no torch and torchvision to keep"
  requirements=$(mktemp)
  grep -v -E '^(torch|torchvision)[=<>~!]' requirements.txt > "$requirements"
fi
"$py" -m pip install -q --upgrade-strategy only-if-needed -r "$requirements"
# The one bootstrap of the checkout: the library as `vheat` (editable, pyproject.toml) and the repository root on the
# environment's path (vheat-checkout.pth), so that `python tools/.../x.py`, the tests and the configs' custom_imports
# import `classification`, `detection`, `segmentation` and `tools` from anywhere.
"$py" -m pip install -q --no-build-isolation --no-deps -e .
"$py" -c 'import sys, sysconfig; open(sysconfig.get_paths()["purelib"] + "/vheat-checkout.pth", "w").write(sys.argv[1] + "\n")' "$PWD"
[ "$core" = 1 ] && exit 0
"$py" -m pip install -q -r requirements-export.txt

if ! "$py" -c "import mmcv.ops" 2>/dev/null; then
  tag=$("$py" -c "import sys, torch; print('py%d%d-torch%s-%s' % (sys.version_info[:2] + (torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')))")
  cache="${VHEAT_WHEEL_CACHE:-$HOME/.cache/vheat/wheels}/$tag"
  if ! ls "$cache"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "Building mmcv 2.1.0 with its ops into $cache (15 minutes on 2 cores, once)"
    "$py" -m pip install -q wheel ninja
    mkdir -p "$cache"
    src=$(mktemp -d)
    # the sdist itself: pip download would run its setup.py, which needs torch (the venv's, hence no isolation)
    "$py" -m pip download -q --no-deps --no-binary mmcv --no-build-isolation -d "$src" mmcv==2.1.0
    tar -xzf "$src"/mmcv-2.1.0.tar.gz -C "$src"
    # mmcv 2.1.0's setup.py compiles its ops with -std=c++17 (three places); torch 2.14's headers stop with #error
    # below C++20 (pytorch#178150; open-mmlab/mmcv#3341, fix unmerged). C++20 builds the same sources; older
    # torch builds with it too. This one flag is the whole patch.
    sed -i 's/-std=c++17/-std=c++20/g' "$src"/mmcv-2.1.0/setup.py
    grep -q -- '-std=c++20' "$src"/mmcv-2.1.0/setup.py || die "mmcv 2.1.0's setup.py no longer sets -std=c++17: update tools/install.sh"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "$py" -m pip wheel -q --no-build-isolation --no-deps -w "$cache" "$src"/mmcv-2.1.0
    rm -rf "$src"
  fi
  "$py" -m pip install -q "$cache"/mmcv-2.1.0-*.whl
fi
"$py" -m pip install -q -r requirements-downstream.txt
"$py" -c "import mmcv.ops, mmdet, mmseg; print('downstream stack ready: mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmseg', mmseg.__version__)"
