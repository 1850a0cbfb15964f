#!/usr/bin/env bash
# The GPU run: correctness of the CUDA path under torchrun (NCCL), then the ratio benchmarks with
# ConvNeXt-XXLarge (random weights: speed does not depend on them), regnety_016 and the four
# students at batch 32 and 256, with views rendered and from the view store (encode --store-views),
# and torch.compile's effect. Writes OUT_DIR/gpu.json (plus the parts and logs beside it).
#
#   benchmarks/gpu.sh OUT_DIR [WHEELS_DIR]
#
# For a machine without network: torch, torchvision, h5py, click, rich, numpy, pillow and scipy
# come from its Python; open_clip_torch, ftfy, wcwidth and timm (the tested version) travel as
# wheels in WHEELS_DIR (default .whl), fetched beforehand on a machine with network:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth timm==1.0.31
# Runs in about 6 minutes on one H100. BENCH_TIMEOUT (seconds, default 400) bounds the benchmark;
# what it measured before a timeout is kept, section by section. A dry run without a GPU:
#   DEVICE=cpu BENCH_ARGS=--quick PYTHON=.venv/bin/python benchmarks/gpu.sh /tmp/gpu-dry
set -uo pipefail
OUT_DIR=$(realpath -m "${1:?usage: benchmarks/gpu.sh OUT_DIR [WHEELS_DIR]}")
WHEELS=$(realpath -m "${2:-.whl}")
cd "$(dirname "$0")/.."
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
SITE=$(mktemp -d)
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl || exit 1
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
start=$(date +%s)

# What this machine provides and what travelled as wheels.
$PY - "$SITE" >"$OUT_DIR/env.json" <<'EOF'
import importlib, importlib.metadata as md, json, sys
site = sys.argv[1]
env = {}
# module -> its distribution, whose metadata gives the version where the module has none
DISTS = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "open_clip": "open_clip_torch",
         "h5py": "h5py", "numpy": "numpy", "PIL": "pillow", "click": "click", "rich": "rich", "ftfy": "ftfy"}
for name, dist in DISTS.items():
    try:
        m = importlib.import_module(name)
        # a module's own __version__ keeps torch's build tag (+cu130); click's warns, so not via getattr
        version = m.__dict__.get("__version__") or md.version(dist)
        env[name] = {"version": version, "carried": m.__file__.startswith(site)}
    except Exception as exc:
        env[name] = {"error": repr(exc)}
import torch
env["cuda"] = torch.version.cuda
env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(json.dumps(env, indent=1))
EOF
cat "$OUT_DIR/env.json"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT_DIR/nvidia-smi.txt"

echo "== torchrun (NCCL) checks"
timeout "${CHECKS_TIMEOUT:-150}" $PY -m benchmarks.gpu_checks torchrun "$OUT_DIR" || echo "torchrun checks: exit $?"
echo "== benchmarks (after $(( $(date +%s) - start )) s)"
timeout "${BENCH_TIMEOUT:-400}" $PY -m benchmarks.run --device "${DEVICE:-cuda}" --out "$OUT_DIR/bench.json" \
  ${BENCH_ARGS:---compile --store-views} 2>&1 | tee "$OUT_DIR/bench.log" | grep -v "^WARNING" || echo "bench: exit $?"
$PY -m benchmarks.gpu_checks merge "$OUT_DIR" >/dev/null
echo "== done in $(( $(date +%s) - start )) s: $OUT_DIR/gpu.json"
