#!/usr/bin/env bash
# One device check for a lent GPU machine, under 8 minutes on one GPU, run from the repository root:
#   1. the cuda-marked tests (gsplat vs the torch splat backend, nerfacc vs torch volume rendering,
#      nvdiffrast vs the torch mesh rasteriser, fp16 Stable Diffusion and its VSD LoRA model);
#   2. tools/bench_render.py --device cuda (the torch backend beside gsplat);
#   3. tools/bench_prior.py --device cuda at 512 px: SDS, VSD with LoRA and ISM steps with peak memory;
#   4. the README's main job, `threedistill run --prompt "a red mug" --prior toyworld`, on the GPU.
# Every part has its own time limit (the whole stays under 8 minutes; a part that runs out is
# reported as such; without gsplat's kernels the main job renders with the torch backend) and its log goes to $OUT (default /tmp/gpu_check); $OUT/gpu_check.md is one
# markdown table of the results, to paste into docs/benchmarks.md. Needs a Python with a CUDA
# build of torch and the project's dependencies; nvdiffrast is optional (its test skips).
# On a machine without a GPU every part fails fast and the table says so (tests/test_gpu_check.py
# runs it that way, with GPU_CHECK_INSTALL=0, to check the plumbing and the report).
# gsplat compiles its CUDA kernels on first use: part 1 includes that (a minute or two).
set -uo pipefail
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
start=$(date +%s)

part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, record status and seconds
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name $rc $(( $(date +%s) - t0 ))" >>"$out/status.txt"
  echo "== $name: exit $rc in $(( $(date +%s) - t0 )) s (limit $limit s)"
  tail -n 25 "$out/$name.log"
}

: >"$out/status.txt"
if [ "${GPU_CHECK_INSTALL:-1}" = 1 ]; then  # 0: use the installed package as is (the CPU test of this script)
  "$py" -m pip install -q --no-deps -e . >"$out/install.log" 2>&1 || echo "editable install failed (see install.log); using the tree as is"
fi
"$py" - >"$out/env.log" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB")
for name in ("gsplat", "nerfacc", "nvdiffrast", "diffusers", "peft"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "present"))
    except Exception as exc:  # noqa: BLE001
        print(name, "missing:", type(exc).__name__, exc)
EOF
cat "$out/env.log"

# limits: 120 + 110 + 50 + 90 + 100 s = 7 min 50 s at most, with the install and the report
part gsplat_build 120 "$py" -c "from threedistill.render.splats_gsplat import gsplat_status; ok, why = gsplat_status(); print(ok, why); raise SystemExit(0 if ok else 3)"
backend=auto
grep -q "^gsplat_build 0 " "$out/status.txt" || backend=torch  # no gsplat kernels: the main job renders with the torch backend
part cuda_tests 110 "$py" -m pytest -q -m cuda tests -p no:cacheprovider
part bench_render 50 "$py" tools/bench_render.py --device cuda --quick
part bench_prior 90 "$py" tools/bench_prior.py --device cuda --resolution 512 --batch 4 --repeats 3 --objectives sds,vsd,ism
part main_job 100 "$py" -m threedistill.cli run --prompt "a red mug" --prior toyworld --device cuda --render.backend "$backend" \
  --out "$out/runs" --log.no-progress

"$py" - "$out" "$start" >"$out/gpu_check.md" <<'EOF'
import json, pathlib, re, sys, time
out, start = pathlib.Path(sys.argv[1]), int(sys.argv[2])
status = {line.split()[0]: (int(line.split()[1]), int(line.split()[2])) for line in (out / "status.txt").read_text().splitlines() if line.strip()}
env = (out / "env.log").read_text().splitlines()
def log(name):
    path = out / f"{name}.log"
    return path.read_text() if path.exists() else ""
def state(name):
    rc, secs = status.get(name, (None, 0))
    return "not run" if rc is None else ("ok" if rc == 0 else ("timed out" if rc == 124 else f"exit {rc}")) + f", {secs} s"
rows = ["| part | result | status |", "|---|---|---|"]
build = log("gsplat_build").strip().splitlines()
rows.append(f"| gsplat kernels | {build[-1] if build else 'no output'} | {state('gsplat_build')} |")
summary = [l for l in log("cuda_tests").splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", l)]
rows.append(f"| cuda tests (`pytest -m cuda`) | {summary[-1].strip(' =') if summary else 'no summary'} | {state('cuda_tests')} |")
render = [l for l in log("bench_render").splitlines() if re.match(r"\s*\d+\s+\d+\s", l)]
for l in render:
    cols = l.split()
    rows.append(f"| render {cols[0]} px, {cols[1]} Gaussians, fwd+bwd | torch {cols[2]} ms; dense {cols[3]} ms; "
                f"gsplat {cols[5] if len(cols) > 5 else '-'} ms (torch/gsplat {cols[6] if len(cols) > 6 else '-'}) | {state('bench_render')} |")
if not render:
    rows.append(f"| render (`bench_render --device cuda`) | no numbers | {state('bench_render')} |")
prior = log("bench_prior")
step = re.search(r"\(b\) full SDS step[^|]*\|\s*([\d.]+)", prior)
peak = re.search(r"peak CUDA memory allocated: ([\d.]+) GiB", prior)
rows.append(f"| SD prior, 512 px, B=4: SDS step | {step.group(1) + ' ms' if step else 'n/a'}; peak {peak.group(1) + ' GiB' if peak else 'n/a'} | {state('bench_prior')} |")
for m in re.finditer(r"^\| (sds|vsd|ism) \| ([^|]+)\| ([^|]*)\| ([^|]*)\|", prior, re.M):
    rows.append(f"| SD prior, 512 px, B=4: {m.group(1)} whole step | {m.group(2).strip()} ms, {m.group(3).strip()} UNet forwards, "
                f"peak {m.group(4).strip()} GiB | {state('bench_prior')} |")
metrics = sorted((out / "runs").glob("*/*/metrics.json"))
if metrics:
    m = json.loads(metrics[-1].read_text())
    rows.append(f"| main job on the GPU (toyworld, 3D Gaussians, SDS, {m.get('steps')} steps) | loop {m.get('seconds')} s; "
                f"mask IoU {m.get('mask_iou', float('nan')):.3f}; PSNR {m.get('psnr', float('nan')):.2f} dB | {state('main_job')} |")
else:
    rows.append(f"| main job on the GPU | no metrics.json | {state('main_job')} |")
print(f"GPU check ({time.strftime('%Y-%m-%d')}, {round(time.time()) - start} s in all): " + "; ".join(l for l in env[:2]))
print()
print("\n".join(rows))
EOF
echo
cat "$out/gpu_check.md"
