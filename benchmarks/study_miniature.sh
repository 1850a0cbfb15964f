#!/usr/bin/env bash
# The README's study miniature: `study teachers` (Figs. 4-6) and `study lambda` (Fig. 7) on the
# synthetic world with the paper's architectures swapped for timm's tiny test networks, on a CPU.
# Usage: benchmarks/study_miniature.sh [WORKDIR]   (from the repository root, after `make venv`)
set -euo pipefail
workdir=${1:-study-work}
dc=(.venv/bin/dait-cache --workdir "$workdir")
arch_map=regnety_016=test_resnet,resnet50=test_byobnet,resnet34=test_convnext,efficientnet_b0=test_efficientnet,vgg13=test_nfnet,resnet18=test_resnet
"${dc[@]}" encode --dataset synthetic --views 4
for plan in teachers lambda; do
    start=$(date +%s)
    "${dc[@]}" study "$plan" --dataset synthetic --arch-map "$arch_map" --epochs 15 --batch-size 64 \
        --lr 3e-3 --no-pretrained --jobs 2 --workers 1 --device cpu
    echo "study $plan: $(( $(date +%s) - start )) s"
    "${dc[@]}" report --study "$plan" --format markdown
done
