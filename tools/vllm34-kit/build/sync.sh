#!/bin/bash
# Copy the kit (without the CPU venv and wheels) to /work/main/.vllm34/ for the device tool's carry.
set -eu
D=/work/main/.vllm34; S=/work/vllm34-kit
rm -rf "$D.new" && mkdir -p "$D.new"
cp -a "$S/README.md" "$S/packs.sha256" "$S/payload" "$S/packs" "$D.new/"
mkdir -p "$D.new/build" && cp -a $(ls -d "$S"/build/* | grep -v -E '/(stub|build.log)$') "$D.new/build/"
rm -rf "$D" && mv "$D.new" "$D"
find "$D" -name __pycache__ -prune -exec rm -rf {} +
du -sh "$D"; ls "$D" "$D/packs"
