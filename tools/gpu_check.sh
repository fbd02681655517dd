#!/usr/bin/env bash
# One short device check for a lent GPU machine: the cuda-marked tests (gsplat vs the torch
# backend, nerfacc vs torch volume rendering, nvdiffrast vs the torch mesh rasteriser, fp16
# Stable Diffusion and its VSD LoRA model) and the GPU render and prior benchmarks.
# nvdiffrast is not a dependency: it is installed here (best effort) so its agreement test runs. Run from the repository root; writes logs to $OUT
# when set. gsplat compiles its CUDA kernels on first use (minutes).
set -uo pipefail
out="${OUT:-/tmp}"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps -e . >/dev/null 2>&1 || true
python3 -m pip install -q nvdiffrast >/dev/null 2>&1 || echo "nvdiffrast did not install; its test will skip"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -m cuda tests 2>&1 | tee "$out/cuda_tests.log"
python3 tools/bench_render.py --device cuda 2>&1 | tee "$out/bench_render_cuda.log"
python3 tools/bench_prior.py --device cuda 2>&1 | tee "$out/bench_prior_cuda.log"
