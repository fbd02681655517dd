"""Batches on Ray (threedistill/batching): specs, stable run folders, a local Ray cluster over
prompts x seeds with its report, a second submission that skips, a killed or preempted worker
whose retry resumes bit for bit, and a Ray Tune sweep of --guidance.cfg-scale.

One local Ray (2 CPUs, no dashboard, token authentication off: RAY_AUTH_MODE=disabled, as in CI)
serves the module; the batch uses a session that is already connected as it is."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import threedistill as td
from threedistill.batching import cluster, runner, tune
from threedistill.batching.naming import run_folder_name
from threedistill.batching.spec import expand, read_spec
from threedistill.engine.load import load_run
from threedistill.engine.plan import parse_run_plan

from support import assert_one_line_error, run_cli

ray = pytest.importorskip("ray")

TINY = ["--config", "quick", "--prior", "toyworld", "--steps", "6", "--prior.num-references", "16", "--prior.resolution", "32",
        "--sampler.width", "32", "--sampler.height", "32", "--sampler.batch-size", "2", "--representation.num-points", "300",
        "--log.turntable-frames", "4", "--log.turntable-resolution", "32", "--log.eval-views", "4", "--log.preview-every", "0",
        "--log.checkpoint-every", "3", "--log.export-formats", "splat", "--device", "cpu"]
"""The quick preset, made tiny: a run takes well under a second once the worker is warm."""


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray of 2 CPUs for the module (no dashboard, no token authentication)."""
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    with cluster.keeping_sigterm_handler():  # later tests fork processes that must die on SIGTERM
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if previous is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = previous


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if the batch tries to reach Ray."""
    def refuse(options: Any) -> bool:
        raise AssertionError("Ray was started before the spec was checked")
    for module in (cluster, runner, tune):
        monkeypatch.setattr(module, "connect", refuse)


# ---------------------------------------------------------------------- specs (no Ray)
def test_a_yaml_sweep_expands_to_prompts_x_variants_x_seeds_with_stable_names(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("# suite\na red cube\n\na snowman   # the second\na red cube\n")
    (tmp_path / "sweep.yaml").write_text("prompts: prompts.txt\nseeds: [0, 1]\nflags: {prior: toyworld, steps: 6}\n"
                                         "grid: {guidance.cfg_scale: [1.0, 2.0]}\nruns: [{}, {representation.num_points: 200}]\n")
    spec = read_spec(tmp_path / "sweep.yaml")
    assert spec.prompts == ["a red cube", "a snowman"] and spec.seeds == [0, 1]
    runs = expand(spec, ["--sampler.width", "32"], tmp_path / "out")
    assert len(runs) == 2 * 4 * 2 and len({r.name for r in runs}) == 16
    first = runs[0]
    assert first.name == run_folder_name("a red cube", 0, {"guidance.cfg_scale": 1.0})
    assert first.name.startswith("a-red-cube/seed-0-guidance-cfg-scale-1-0-")
    assert run_folder_name("a red cube", 0, {"guidance.cfg_scale": 1.0}) != run_folder_name("a red cube", 0, {"guidance.cfg_scale": 2.0})
    assert read_spec(tmp_path / "sweep.yaml", seeds=[5]).seeds == [5], "--seeds wins over the file's"
    # later flags win: the spec's flags, the command line's, the variant's
    cfg = parse_run_plan(runs[-1].flags)[0].cfg
    assert (cfg.steps, cfg.sampler.width, cfg.representation.num_points, cfg.seed, cfg.prompt) == (6, 32, 200, 1, "a snowman")
    assert cfg.guidance.cfg_scale == 2.0  # type: ignore[attr-defined]


BAD_SPECS = {
    "missing file": (None, [], "batch spec not found"),
    "bad YAML": ("prompts: [a red cube\n", [], "not valid YAML"),
    "unknown key": ("prompts: [a red cube]\nseed: [1]\n", [], "unknown key 'seed'"),
    "unknown flag in an override": ("prompts: [a red cube]\nruns: [{guidance.cfg_scal: 2}]\n", [], "cfg-scal"),
    "unknown run flag": ("prompts: [a red cube]\n", ["--guidance.cfg-scal", "2"], "cfg-scal"),
    "a per-run flag": ("prompts: [a red cube]\n", ["--seed", "3"], "'--seed' is set by the batch"),
    "a prompt the prior cannot read": ("prompts: [a purple giraffe]\n", [], "giraffe"),
    "prompts sharing a folder": ("prompts: [a red cube, A red cube!]\n", [], "share the run folder"),
    "bad seeds": ("prompts: [a red cube]\nseeds: [-1]\n", [], "non-negative"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_a_bad_spec_is_one_line_and_exit_2_before_ray_starts(case: str, tmp_path: Path, no_ray: None) -> None:
    text, flags, needle = BAD_SPECS[case]
    spec = tmp_path / "sweep.yaml"
    if text is not None:
        spec.write_text(text)
    proc = run_cli("batch", str(spec), "--out", str(tmp_path / "out"), *TINY, *flags)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "out").exists()


GOOD_PROMPTS = st.lists(st.sampled_from(["a red cube", "a snowman", "a mug"]), min_size=1, max_size=2)
PROMPTS = st.lists(st.sampled_from(["a red cube", "a snowman", "a purple giraffe", "", "A red cube!", "../../x", "一只杯子"]),
                   max_size=2)
SETTING_KEYS = st.sampled_from(["guidance.cfg_scale", "guidance.cfg-scale", "steps", "prior", "guidance", "representation.num_points",
                                "sampler.width", "seed", "prompt", "out", "nonsense", "log.checkpoint_every", "config"])
GOOD_SETTINGS = st.sampled_from([("guidance.cfg_scale", 2.0), ("steps", 4), ("representation.num_points", 200), ("sampler.width", 32),
                                 ("guidance", "sds"), ("log.checkpoint_every", 2)])
VALUES = st.one_of(st.integers(-3, 70), st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from(["sds", "vsd", "toyworld", "quick", "bogus", "", "1e9", "nan"]), st.booleans(), st.none())
SETTINGS = st.one_of(st.builds(lambda kv: dict([kv]), GOOD_SETTINGS), st.dictionaries(SETTING_KEYS, VALUES, max_size=2))
SPEC_MAPPINGS = st.fixed_dictionaries(
    {"prompts": st.sampled_from([GOOD_PROMPTS] * 5 + [PROMPTS, VALUES]).flatmap(lambda strategy: strategy)},
    optional={"seeds": st.one_of(st.lists(st.integers(-1, 3), max_size=2), VALUES),
              "flags": st.one_of(SETTINGS, VALUES),
              "grid": st.one_of(st.dictionaries(st.one_of(GOOD_SETTINGS.map(lambda kv: kv[0]), SETTING_KEYS),
                                                st.one_of(st.lists(VALUES, min_size=1, max_size=2),
                                                          st.lists(GOOD_SETTINGS.map(lambda kv: kv[1]), min_size=1, max_size=2)),
                                                max_size=1), VALUES),
              "runs": st.one_of(st.lists(SETTINGS, min_size=1, max_size=2), VALUES)})


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=SPEC_MAPPINGS, prompts_file=st.booleans(), mangle=st.sampled_from(["", "", "", "", "", ":", "[", "\t-"]),
       junk=st.sampled_from([False] * 5 + [True]))
def test_generated_specs_are_one_line_before_ray_or_reach_it(data: dict[str, Any], prompts_file: bool, mangle: str, junk: bool,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated YAML sweeps and prompts files (broken YAML, wrong types, bad settings, per-run flags):
    each one is refused in one line with exit 2, or is valid and reaches Ray (stubbed here)."""
    import yaml

    from support import FUZZ

    def reached(options: Any) -> bool:
        raise td.UserError("reached Ray")
    for module in (cluster, runner, tune):
        monkeypatch.setattr(module, "connect", reached)
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    if prompts_file:
        spec = case / "prompts.txt"
        prompts = data["prompts"] if isinstance(data["prompts"], list) else [data["prompts"]]
        spec.write_text("\n".join(map(str, prompts)) + mangle)
    else:
        spec = case / "sweep.yaml"
        spec.write_text(yaml.safe_dump({**data, **({"nonsense": 1} if junk else {})}) + mangle)
    FUZZ["cases"] += 1
    proc = run_cli("batch", str(spec), "--out", str(case / "out"), "--no-progress", *TINY)
    if "Traceback" in proc.stderr:
        FUZZ["tracebacks"] += 1
    assert_one_line_error(proc)
    assert not (case / "out").exists()


def test_resubmitting_with_other_settings_is_refused(tmp_path: Path, no_ray: None) -> None:
    """A stable folder made with other settings is not continued with these (one line, exit 2)."""
    (tmp_path / "p.txt").write_text("a red cube\n")
    runs = expand(read_spec(tmp_path / "p.txt"), TINY, tmp_path / "out")
    folder = runs[0].run_dir(tmp_path / "out")
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("steps: 7\n")
    assert_one_line_error(run_cli("batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "out"), *TINY), "other settings")


def test_a_cluster_address_that_refuses_is_one_line_at_once() -> None:
    """Ray itself retries an unreachable address for minutes; the batch says so in seconds."""
    with pytest.raises(td.UserError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        cluster._check_reachable("127.0.0.1:1")
    with pytest.raises(td.UserError, match="auto or HOST:PORT"):
        cluster._check_reachable("headnode")


# ---------------------------------------------------------------------- a batch on a local Ray
def test_three_prompts_x_two_seeds_finish_with_a_report_and_a_resubmission_skips_them(tmp_path: Path, local_ray: None) -> None:
    (tmp_path / "prompts.txt").write_text("a red cube\na snowman\n# not a prompt\na mug\n")
    out = tmp_path / "suite"
    proc = run_cli("batch", str(tmp_path / "prompts.txt"), "--seeds", "0", "1", "--out", str(out), "--no-progress", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out) and "6 of 6 runs done" in proc.stderr
    rows = json.loads((out / "batch.json").read_text())["rows"]
    assert [(r["prompt"], r["seed"], r["status"]) for r in rows] == [
        (p, s, "finished") for p in ("a red cube", "a snowman", "a mug") for s in (0, 1)]
    for row in rows:
        run_dir = out / row["run"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert row["steps"] == metrics["steps"] == 6 and row["mask_iou"] == metrics["mask_iou"] and row["gpu"] == "cpu"
        assert (run_dir / "thumbnail.png").is_file() and (run_dir / "export" / "splats.ply").is_file()
    csv_lines = (out / "batch.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("run,prompt,seed,overrides,status")
    report = (out / "report.md").read_text()
    assert "6 finished of 6 runs" in report and "## a snowman" in report and "contact_sheet.png" in report
    from PIL import Image

    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height > 3 * 96 and sheet.width > 2 * 4 * 96  # a row per prompt, both seeds' 4 views each

    start = time.perf_counter()
    again = td.batch(tmp_path / "prompts.txt", seeds=[0, 1], out=out, flags=TINY, options=td.BatchOptions(progress=False))
    assert [r["status"] for r in again.rows] == ["skipped"] * 6 and again.meta["submitted"] == 0
    assert [r["mask_iou"] for r in again.rows] == [r["mask_iou"] for r in rows]
    assert all(len((out / r["run"] / "attempts.jsonl").read_text().splitlines()) == 1 for r in rows), "no task ran"
    assert time.perf_counter() - start < 30


# ---------------------------------------------------------------------- a worker dies mid-run
LONG = [*TINY, "--steps", "80", "--log.checkpoint-every", "10"]
LONGER = [*TINY, "--steps", "400", "--log.checkpoint-every", "10"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The final parameters of the LONG run trained in one go, in this process, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("uninterrupted")
        run = td.run_plan(parse_run_plan([*LONG, "--prompt", "a red cube", "--seed", "0", "--out", str(out), "--log.no-progress"]))
        return dict(load_run(run.run_dir).representation.state_dict())
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_worker_killed_mid_run_is_retried_from_its_checkpoint_and_ends_as_an_uninterrupted_run(
        signum: int, tmp_path: Path, local_ray: None, uninterrupted: dict[str, torch.Tensor]) -> None:
    """SIGKILL (a lost worker) costs the steps since the last checkpoint; SIGTERM (preemption)
    checkpoints first. Either way Ray retries the task, which resumes from last.pt, and the run
    ends with 80 steps and the parameters of a run that was never interrupted."""
    (tmp_path / "p.txt").write_text("a red cube\n")
    out = tmp_path / "out"
    run_dir = out / "a-red-cube" / "seed-0"
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(table=td.batch(
        tmp_path / "p.txt", out=out, flags=LONG, options=td.BatchOptions(progress=False, max_retries=2))))
    thread.start()
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "step-000020.pt").exists():  # then last.pt holds step 10 or later
        assert time.monotonic() < deadline and thread.is_alive(), "the run never reached its first checkpoint"
        time.sleep(0.005)
    pid = json.loads((run_dir / "attempts.jsonl").read_text().splitlines()[0])["pid"]
    os.kill(pid, signum)
    thread.join(timeout=180)
    assert not thread.is_alive()
    (row,) = result["table"].rows
    assert row["status"] == "finished" and row["attempt"] == 2 and row["steps"] == 80, row
    assert row["resumed_from"] is not None and 10 <= row["resumed_from"] < 80, row
    log = (run_dir / "log.txt").read_text()
    assert f"resumed at step {row['resumed_from']}" in log
    if signum == signal.SIGTERM:
        assert f"interrupted (SIGTERM) at step {row['resumed_from']}; checkpoint saved" in log
    final = load_run(run_dir).representation.state_dict()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(final[name], value, msg=name, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- a sweep with Ray Tune
def test_a_tune_sweep_over_cfg_scale_reports_the_best_value_by_mask_iou_and_restores(tmp_path: Path, local_ray: None) -> None:
    """Three --guidance.cfg-scale values as Tune trials, scored on held-out views every 10 steps,
    ASHA free to stop the trailing ones after 10; the best finished run by mask IoU is marked in the
    table and printed. A second submission restores the experiment (Tuner.restore) and trains nothing."""
    (tmp_path / "sweep.yaml").write_text("prompts: [a red cube]\ngrid: {guidance.cfg_scale: [1.0, 10.0, 100.0]}\n")
    out = tmp_path / "sweep"
    flags = [*TINY, "--steps", "30", "--log.checkpoint-every", "10"]
    args = ["batch", str(tmp_path / "sweep.yaml"), "--out", str(out), "--no-progress", "--tune", "--tune.metric", "mask_iou",
            "--tune.report-every", "10", "--tune.grace-steps", "10", *flags]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    rows = json.loads((out / "batch.json").read_text())["rows"]
    assert [json.loads(r["overrides"])["guidance.cfg_scale"] for r in rows] == [1.0, 10.0, 100.0]
    finished = [r for r in rows if r["status"] == "finished"]
    assert finished and all(r["status"] in ("finished", "stopped") for r in rows)
    for row in rows:
        metrics = out / row["run"] / "metrics.json"
        if row["status"] == "finished":
            assert row["steps"] == 30 and row["mask_iou"] == json.loads(metrics.read_text())["mask_iou"]
        else:  # stopped early by ASHA at a rung, keeping its checkpoint
            assert row["step"] < 30 and not metrics.exists() and (out / row["run"] / "checkpoints" / "last.pt").is_file()
    (best,) = [r for r in rows if r["best"]]
    assert best["mask_iou"] == max(r["mask_iou"] for r in finished)
    assert f"best by mask_iou: {best['run']}" in proc.stderr and f"Best by mask_iou: {best['run']}" in (out / "report.md").read_text()

    again = run_cli(*args)
    assert again.returncode == 0 and "restoring the sweep" in again.stderr, again.stderr
    assert json.loads((out / "batch.json").read_text())["rows"] == rows
    assert all(len((out / r["run"] / "attempts.jsonl").read_text().splitlines()) == 1 for r in rows), "nothing trained again"
    (tmp_path / "sweep.yaml").write_text("prompts: [a red cube]\ngrid: {guidance.cfg_scale: [1.0, 10.0, 100.0, 3.0]}\n")
    assert_one_line_error(run_cli(*args), "was made for other runs")


# ---------------------------------------------------------------------- the diffusers code path
SD_QUICK = ["--device", "cpu", "--steps", "2", "--representation.num-points", "300", "--sampler.batch-size", "1",
            "--log.turntable-frames", "2", "--log.turntable-resolution", "32", "--log.preview-every", "0",
            "--log.checkpoint-every", "0", "--log.export-formats", "splat"]


def test_a_batch_and_a_loss_sweep_through_stable_diffusion(tiny_sd: dict[str, Path], tmp_path: Path, local_ray: None) -> None:
    """A tiny SD 1.x pipeline loaded by each worker through the real diffusers path: a batch of two
    prompts, then a sweep of its CFG scale by loss (SD has no ground truth: mask IoU is refused)."""
    sd = ["--prior", "sd", "--prior.model", str(tiny_sd["sd1"]), *SD_QUICK]
    table = td.batch(["a corgi", "a red mug"], out=tmp_path / "b", flags=sd, options=td.BatchOptions(progress=False))
    assert [(r["prompt"], r["status"], r["steps"]) for r in table.rows] == [("a corgi", "finished", 2), ("a red mug", "finished", 2)]
    assert all("mask_iou" not in r and (tmp_path / "b" / r["run"] / "thumbnail.png").is_file() for r in table.rows)

    sweep = {"prompts": ["a corgi"], "grid": {"guidance.cfg_scale": [7.5, 30.0]}}
    with pytest.raises(td.UserError, match="needs a prior with ground truth"):
        td.batch(sweep, out=tmp_path / "s", flags=sd, tune=td.TuneOptions(metric="mask_iou"))
    swept = td.batch(sweep, out=tmp_path / "s", flags=sd, tune=td.TuneOptions(metric="loss"), options=td.BatchOptions(progress=False))
    assert [r["status"] for r in swept.rows] == ["finished", "finished"]
    (best,) = [r for r in swept.rows if r["best"]]
    assert best["loss"] == min(r["loss"] for r in swept.rows)


# ---------------------------------------------------------------------- the README's cluster recipe
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # a second Ray cluster and four processes: about a minute on 2 shared cores
def test_the_cluster_recipe_ray_start_job_submit_and_ray_address(tmp_path: Path) -> None:
    """`ray start --head` (dashboard on 127.0.0.1), `ray job submit -- threedistill batch ...` (the
    driver joins through RAY_ADDRESS), then `threedistill batch --ray-address HOST:PORT` with one more
    seed: the first seed's runs are skipped, the new ones run on the cluster."""
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    port, dashboard = _free_port(), _free_port()
    # the module's own local Ray has a node agent on Ray's default ports: this second cluster's must differ
    agent_ports = [flag for name in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                                     "--runtime-env-agent-port") for flag in (name, str(_free_port()))]
    (tmp_path / "p.txt").write_text("a red cube\na snowman\n")
    out = tmp_path / "out"
    log = tmp_path / "head.log"
    ray_tmp = tempfile.mkdtemp(prefix="td-ray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    with open(log, "w") as sink:
        head = subprocess.Popen([str(bin_dir / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--disable-usage-stats",
                                 "--temp-dir", ray_tmp, *agent_ports], stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "block forever" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        batch = [sys.executable, "-m", "threedistill.cli", "batch", str(tmp_path / "p.txt"), "--out", str(out), "--no-progress", *TINY]
        while True:  # the head's job agent starts after `ray start` returns: "No available agent ..., try again later"
            job = subprocess.run([str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--", *batch],
                                 capture_output=True, text=True, env=env, timeout=300)
            if "No available agent" not in job.stderr + job.stdout or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert job.returncode == 0 and "2 of 2 runs done" in job.stdout + job.stderr, job.stdout + job.stderr
        more = subprocess.run([*batch, "--seeds", "0", "1", "--ray-address", f"127.0.0.1:{port}"], capture_output=True, text=True,
                              env=env, timeout=300)
        assert more.returncode == 0, more.stderr
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    rows = json.loads((out / "batch.json").read_text())["rows"]
    assert [(r["prompt"], r["seed"], r["status"]) for r in rows] == [
        ("a red cube", 0, "skipped"), ("a red cube", 1, "finished"), ("a snowman", 0, "skipped"), ("a snowman", 1, "finished")]


@pytest.mark.slow  # a driver process with its own local Ray: about 45 s on 2 shared cores
def test_ctrl_c_on_the_driver_cancels_the_runs_and_the_next_submission_resumes_them(tmp_path: Path, local_ray: None) -> None:
    """SIGINT to a `threedistill batch` process (its own local Ray) mid-run: exit 130, the report
    marks the run interrupted, its folder keeps a checkpoint; submitting again resumes it to the end.
    (400 steps: the run must outlast the driver's reaction to the signal.)"""
    import subprocess
    import sys

    (tmp_path / "p.txt").write_text("a red cube\n")
    out = tmp_path / "out"
    run_dir = out / "a-red-cube" / "seed-0"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "threedistill.cli", "batch", str(tmp_path / "p.txt"), "--out", str(out),
                               "--ray-cpus", "1", "--no-dashboard", "--no-progress", *LONGER],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 180
    while not (run_dir / "checkpoints" / "step-000020.pt").exists():
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
        time.sleep(0.005)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130 and "Traceback" not in stderr, stderr
    assert "cancelling 1 run(s)" in stderr
    (row,) = json.loads((out / "batch.json").read_text())["rows"]
    assert row["status"] == "interrupted" and not (run_dir / "metrics.json").exists()
    again = td.batch(tmp_path / "p.txt", out=out, flags=LONGER, options=td.BatchOptions(progress=False))
    (row,) = again.rows
    assert row["status"] == "finished" and row["steps"] == 400 and 10 <= row["resumed_from"] < 400, row
    assert f"resumed at step {row['resumed_from']}" in (run_dir / "log.txt").read_text()
