#!/bin/sh
# The pure-Python packages lmexp needs that the lent GPU machine's image lacks (its package list:
# the device library's KINDS.md; its python3 is 3.12 with torch, Lightning and the rest), copied
# from this environment into .pydeps/ (git-ignored) for a device run to carry. Nothing can be
# installed there: it reaches no package registry. Then, in the device tool's run:
#   carry [".pydeps"], command:
#   PYTHONPATH=.:.pydeps PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --device cuda \
#       --results $OUT/RESULTS.md 2>&1 | tee $OUT/gpu.log
# (--device cuda: fail rather than fall back to the tiny CPU rows; --results under $OUT, which
# comes back; timeout_s about 540 leaves room for the two compilations.)
set -e
dest=${1:-.pydeps}
rm -rf "$dest"
mkdir -p "$dest"
for module in hydra omegaconf antlr4 nltk; do
    cp -r "$(python3 -c "import os, $module; print(os.path.dirname($module.__file__))")" "$dest/"
done
find "$dest" -name __pycache__ -prune -exec rm -rf {} +
du -sh "$dest"
