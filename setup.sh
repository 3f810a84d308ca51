#!/usr/bin/env bash
# Set up bdprune on a fresh Debian machine: Fashion-MNIST (Debian's package), a virtual environment in
# .venv, the CPU build of torch from constraints.txt, and bdprune itself with its test and Ray extras (the
# Ray executor's tests run in CI; without Ray they skip). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get install -y dataset-fashion-mnist || { $sudo apt-get update && $sudo apt-get install -y dataset-fashion-mnist; }
fi
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,ray]'
