#!/usr/bin/env bash
# Every install step the project needs, idempotent: the venv, pinned packages, the package itself,
# and (as root on Debian) Fashion-MNIST from Debian's archive. `make` calls this; so can you.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "setup: installing pinned packages (requirements.lock)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements.lock 2>&1 | grep -v -E "^WARNING: Location .* is ignored" || true
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -e . 2>&1 | grep -v -E "^WARNING: Location .* is ignored" || true
"$VENV/bin/python" -c "import torch, torchvision, safetensors, skimage, sklearn" \
  || { echo "setup: packages failed to install" >&2; exit 1; }

# Fashion-MNIST: Debian ships it (MIT licence) as gzipped IDX files. Elsewhere the library falls
# back to torchvision's downloader into ~/.cache/surrogate-kd when a command is given --download.
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing dataset-fashion-mnist from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
touch "$VENV/.installed"
