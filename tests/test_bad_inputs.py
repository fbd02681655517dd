"""Generated bad input (hypothesis): flags, config files, transforms.json scenes, images, meshes,
prompts. Every case must end in success (exit 0), or one line on stderr with exit 2 (bad input)
or 3 (a run stopped by a fault), never a traceback, and leave no unfinished run folder behind.

The CLI runs in this process (`main(argv)`), so a few hundred cases take about a minute; the
cases are derandomised (the same every CI run) and counted in the terminal summary
(`support.FUZZ`). THREEDISTILL_FUZZ_SCALE=10 draws ten times as many, at random.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from support import FUZZ, SMALL_NERF, TINY_FLAGS, run_cli

CHEAP = ["--steps", "2", "--log.eval-views", "1", "--log.turntable-frames", "2", "--log.export-formats", "splat"]
"""Flags after TINY_FLAGS that keep a case that succeeds under a second."""
ANY_REPRESENTATION = [flag for i, flag in enumerate(TINY_FLAGS) if "num-points" not in flag and "num-points" not in TINY_FLAGS[i - 1]]
"""TINY_FLAGS without the Gaussians' point count, for any representation."""

SCALE = float(os.environ.get("THREEDISTILL_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> Any:
    """Hypothesis settings for `examples` generated cases (times THREEDISTILL_FUZZ_SCALE; random when scaled)."""
    return settings(max_examples=max(1, round(examples * SCALE)), deadline=None, derandomize=SCALE == 1, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])


pytestmark = pytest.mark.usefixtures("one_thread")


class Case:
    """One generated input in a fresh folder; `check` runs the CLI and judges the outcome."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(dir=root))
        self.out = self.dir / "out"

    def __enter__(self) -> "Case":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def check(self, *argv: str) -> int:
        FUZZ["cases"] += 1
        with warnings.catch_warnings(record=True) as caught:  # a warning a user sees is two more lines on stderr
            warnings.simplefilter("default")
            for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):  # Python's defaults
                warnings.filterwarnings("ignore", category=hidden)
            proc = run_cli(*argv)
        if "Traceback" in proc.stderr:
            FUZZ["tracebacks"] += 1
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        lines += [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught]
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode in (0, 2, 3), (proc.returncode, proc.stderr)
        if proc.returncode == 2:  # refused before any work: one line, nothing made
            assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
            assert not self.out.exists() or not any(self.out.rglob("*")), sorted(self.out.rglob("*"))
        if proc.returncode == 3:  # stopped by a fault: one error line; what it made is a resumable run
            assert len([ln for ln in lines if ln.startswith("error: ")]) == 1, proc.stderr
            for run in self._run_folders():
                assert (run / "checkpoints" / "last.pt").is_file(), run
        if proc.returncode == 0:
            for run in self._run_folders():
                assert (run / "metrics.json").is_file() or (run / "edit.json").is_file(), sorted(run.rglob("*"))
        return proc.returncode

    def _run_folders(self) -> list[Path]:
        if not self.out.exists():
            return []
        runs = [p.parent for p in self.out.rglob("config.yaml")] + [p.parent for p in self.out.rglob("edit.json")]
        for path in self.out.rglob("*"):  # every folder made lies inside --out and belongs to a run
            assert path.resolve().is_relative_to(self.out.resolve()), path
        return runs


# ---------------------------------------------------------------------- values
NUMBERS = st.sampled_from(["-1", "0", "1", "2", "0.5", "-0.5", "1e12", "-1e12", "nan", "inf", "-inf", "1e-12", "999", "1000000000000"])
JUNK = st.sampled_from(["", "x", "true", "None", "[1, 2]", "1,2", "0x10", "--", "--steps", "é", "\u202e", "1 2", "{}", "../../etc"])
VALUE = st.one_of(NUMBERS, JUNK)


def _component_flags(section: str, names: tuple[str, ...]) -> list[str]:
    """Every dotted flag of the chosen components' sections and the core sections."""
    import dataclasses

    from threedistill.config import ComponentNames, default_run_config

    cfg = default_run_config(ComponentNames(*names))
    flags = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                inner = getattr(value, sub.name)
                if dataclasses.is_dataclass(inner):
                    flags += [f"--{f.name}.{sub.name}.{g.name}".replace("_", "-") for g in dataclasses.fields(inner)]
                else:
                    flags.append(f"--{f.name}.{sub.name}".replace("_", "-"))
        elif f.name not in ("out", "prompt"):
            flags.append(f"--{f.name}".replace("_", "-"))
    skip = ("--log.progress", "--log.export-formats", "--prompts.cache-dir", "--prior.cache-dir", "--sampler.scene")
    return [flag for flag in flags if not flag.startswith(skip)]


COMBOS = [("toyworld", "sds", "gaussians"), ("toyworld", "vsd", "gaussians"), ("toyworld", "ism", "gaussians"),
          ("toyworld", "csd", "gaussians"), ("toyworld", "sds", "nerf"), ("toyworld", "sds", "mesh")]
FLAGS = {combo: _component_flags("", combo) for combo in COMBOS}
SIZE_FLAGS = {"nerf": [f"--representation.{k.replace('_', '-')}={v}" for k, v in SMALL_NERF.items()],
              "mesh": ["--representation.init-subdivisions=1", "--representation.log2-table-size=10", "--representation.max-resolution=16"],
              "gaussians": []}


@st.composite
def flag_cases(draw: st.DrawFn) -> list[str]:
    combo = draw(st.sampled_from(COMBOS))
    tiny = TINY_FLAGS if combo[2] == "gaussians" else ANY_REPRESENTATION
    argv = [*tiny, "--prior", combo[0], "--guidance", combo[1], "--representation", combo[2], *SIZE_FLAGS[combo[2]]]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 9))
        if kind <= 6:  # a known flag with a bad (or harmless) value
            argv += [draw(st.sampled_from(FLAGS[combo])), draw(VALUE)]
        elif kind == 7:  # a misspelt or unknown flag
            argv += [draw(st.sampled_from(["--stepz", "--prior.kapa", "--representation", "--guidance.nope", "--log", "-x"])), draw(VALUE)]
        elif kind == 8:  # a schedule
            argv += [draw(st.sampled_from(["--guidance.max-step", "--guidance.min-step", "--guidance.grad-clip"])),
                     *draw(st.lists(NUMBERS, min_size=1, max_size=5))]
        else:  # a component or preset name
            argv += [draw(st.sampled_from(["--prior", "--guidance", "--representation", "--config"])),
                     draw(st.sampled_from(["sd", "bogus", "", "toyworld-video", "dds", "photometric", "quick", "mesh", "../x"]))]
    return argv


@fuzz(100)
@given(argv=flag_cases())
def test_generated_flags(argv: list[str], tmp_path: Path) -> None:
    with Case(tmp_path) as case:
        case.check("run", *CHEAP, "--out", str(case.out), *argv)


# ---------------------------------------------------------------------- config files
KEYS = ["prompt", "steps", "seed", "device", "out", "negative_prompt", "dynamic", "prior", "guidance", "representation", "sampler",
        "render", "log", "mesh", "prompts", "motion", "deformation", "stages", "nonsense", "Steps"]
SECTION_KEYS = ["name", "num_points", "kappa", "cfg_scale", "max_step", "width", "batch_size", "background", "sh_degree",
                "resolution", "export_formats", "lr_means", "num_pointz", "particles", "mesh", "scene"]
YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([1e12, -1e12, 0.5, 2**70]),
              st.floats(allow_nan=True, allow_infinity=True, width=32), st.text(max_size=8),
              st.sampled_from(["toyworld", "sds", "gaussians", "nerf", "mesh", "vsd", "a red cube", "bogus"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(SECTION_KEYS), inner, max_size=3)),
    max_leaves=8)
STAGE = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["coarse", "refine", "coarse", "../../x", "a/b", "", "CON", "x" * 50, "é"]),
    "share": st.sampled_from([0.5, 0.0, -1, 2, "x", None, 1e12]),
    "steps": st.sampled_from([1, 2, 0, -3, "x", 1e12]),
    "representation": st.sampled_from([{"name": "mesh"}, {"name": "nerf", **SMALL_NERF}, "gaussians", {"num_points": -1}, 3]),
    "guidance": st.sampled_from([{"max_step": 500}, {"name": "bogus"}, {"cfg_scale": "x"}]),
    "sampler": st.sampled_from([{"width": 32}, {"widht": 32}, {"width": -32}]),
    "prompt": st.just("a red cube"), "dynamic": st.booleans(),
})


@st.composite
def config_files(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:  # not a mapping, or not YAML at all
        return draw(st.sampled_from(["", "- a\n- b\n", "key: [unclosed\n", "\t\tbad: indent\n", "a: b: c\n", "!!python/object:os.system {}\n",
                                     "&a [*a]\n", "prompt: a red cube\n" * 3, "\x00\x01\x02", "steps: !!float nan\n"]))
    data = draw(st.dictionaries(st.sampled_from(KEYS), YAML_VALUES, max_size=4))
    if draw(st.booleans()):
        data["stages"] = draw(st.lists(STAGE, max_size=3))
    import yaml

    return yaml.safe_dump(data, allow_unicode=True)


@fuzz(90)
@given(text=config_files())
def test_generated_config_files(text: str, tmp_path: Path) -> None:
    with Case(tmp_path) as case:
        path = case.dir / "config.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        case.check("run", "--config", str(path), *ANY_REPRESENTATION, *CHEAP, "--out", str(case.out))


# ---------------------------------------------------------------------- images (edit-image)
def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no data (a decompression bomb)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@st.composite
def images(draw: st.DrawFn) -> tuple[str, bytes]:
    from PIL import Image

    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from([("img.png", b""), ("img.png", b"\x89PNG\r\n"), ("img.jpg", b"not an image"),
                                     ("img.png", _png_claiming(100_000, 100_000)), ("img.png", _png_claiming(0, 5)),
                                     ("img.txt", b"hello"), ("img", b"\xff\xd8\xff")]))
    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I", "F", "CMYK", "RGBX"]))
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode) if mode not in ("I;16", "I", "F") \
        else Image.fromarray(rng.integers(0, 255, (size[1], size[0])).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # PIL cannot write this mode in this format
    data = buffer.getvalue()
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]  # truncated
    suffix = draw(st.sampled_from([fmt.lower(), "png", "jpg"]))
    return f"img.{suffix}", data


@fuzz(60)
@given(image=images())
def test_generated_images_for_edit_image(image: tuple[str, bytes], tmp_path: Path) -> None:
    with Case(tmp_path) as case:
        path = case.dir / image[0]
        path.write_bytes(image[1])
        case.check("edit-image", str(path), "--source", "a red cube", "--target", "a blue cube", "--prior", "toyworld",
                   "--steps", "1", "--prior.num-references", "8", "--prior.resolution", "16", "--out", str(case.out))


# ---------------------------------------------------------------------- meshes
@st.composite
def meshes(draw: st.DrawFn) -> tuple[str, bytes]:
    import trimesh

    suffix = draw(st.sampled_from([".glb", ".obj", ".ply", ".stl"]))
    kind = draw(st.integers(0, 9))
    if kind == 0:  # empty, random bytes, or a header that claims a billion elements
        return suffix, draw(st.sampled_from([
            b"", b"\0" * 84, bytes(range(256)) * 4, b"v 1 2 3\nf 1 2 9\n", b"ply\nformat ascii 1.0\nend_header\n",
            b"ply\nformat binary_little_endian 1.0\nelement vertex 1000000000\nproperty float x\nproperty float y\n"
            b"property float z\nelement face 1000000000\nproperty list uchar int vertex_indices\nend_header\n",
            b"\0" * 80 + struct.pack("<I", 10**9), b"glTF" + struct.pack("<II", 2, 10**9)]))
    n = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    vertices = rng.normal(size=(n, 3))
    if kind == 1:
        vertices[:] = 0.0  # every vertex at one point
    if kind == 2:
        vertices[0] = np.nan
    faces = rng.integers(0, n, size=(draw(st.integers(0, 16)), 3))  # random triangles: non-manifold, degenerate
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if draw(st.booleans()) and len(faces):
        mesh.visual.face_colors = rng.integers(0, 255, (len(faces), 4), dtype=np.uint8)
    try:
        data = mesh.export(file_type=suffix[1:])
    except Exception:  # noqa: BLE001 - trimesh cannot write this one
        assume(False)
    data = data.encode() if isinstance(data, str) else data
    if draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]  # truncated
    return suffix, data


@fuzz(80)
@given(mesh=meshes(), through=st.sampled_from(["scene", "scene", "scene", "run"]))
def test_generated_meshes(mesh: tuple[str, bytes], through: str, tmp_path: Path) -> None:
    with Case(tmp_path) as case:
        path = case.dir / f"mesh{mesh[0]}"
        path.write_bytes(mesh[1])
        if through == "scene":
            case.check("toyworld", "scene", "my mesh", str(case.out / "scene"), "--mesh", str(path), "--views", "1", "--resolution", "8")
        else:
            case.check("run", *TINY_FLAGS, *CHEAP, "--prior.mesh", str(path), "--prompt", "my mesh", "--out", str(case.out))


# ---------------------------------------------------------------------- transforms.json scenes
def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


@st.composite
def scenes(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A transforms.json (as data) and its image files, from a valid scene with some fields broken."""
    from PIL import Image

    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n, size = draw(st.integers(1, 3)), draw(st.integers(4, 24))
    files: dict[str, bytes] = {}
    frames = []
    for i in range(n):
        eye = rng.normal(size=3)
        eye = 2.8 * eye / max(np.linalg.norm(eye), 1e-6)
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = _rotation(rng), eye
        buffer = io.BytesIO()
        mode = draw(st.sampled_from(["RGB", "RGBA", "L"]))
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert(mode).save(buffer, format="PNG")
        files[f"images/{i}.png"] = buffer.getvalue()
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": c2w.tolist()})
    data: dict[str, Any] = {"fl_x": size * 1.2, "fl_y": size * 1.2, "cx": size / 2, "cy": size / 2, "w": size, "h": size, "frames": frames}
    breakages = draw(st.lists(st.integers(0, 14), min_size=0 if draw(st.integers(0, 5)) == 0 else 1, max_size=3))
    target = frames[draw(st.integers(0, n - 1))]
    bad_number = draw(st.sampled_from([0, -1, 1e300, "12", None, True, [1], float("nan")]))
    for b in breakages:
        if b == 0:
            data[draw(st.sampled_from(["fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x"]))] = bad_number
        elif b == 1:
            target["transform_matrix"] = draw(st.sampled_from([[[1, 0], [0, 1]], "eye", None, [[float("nan")] * 4] * 4,
                                                               (np.eye(4) * 2).tolist(), [[1, 0, 0, 0]] * 4]))
        elif b == 2:
            target["file_path"] = draw(st.sampled_from(["missing.png", "/etc/passwd", "../../outside.png", "", 3, "images", None]))
        elif b == 3:
            target.pop(draw(st.sampled_from(["file_path", "transform_matrix"])))
        elif b == 4:
            files[target["file_path"]] = files[target["file_path"]][: draw(st.integers(0, 40))] if isinstance(target["file_path"], str) \
                and target["file_path"] in files else b""
        elif b == 5:
            data["frames"] = draw(st.sampled_from([[], {}, None, "frames", [1, 2]]))
        elif b == 6:
            data["camera_model"] = draw(st.sampled_from(["OPENCV_FISHEYE", "EQUIRECTANGULAR", "PINHOLE", 5]))
        elif b == 7:
            target["mask_path"] = draw(st.sampled_from(["images/0.png", "nope.png", None]))
        elif b == 8:  # another image size
            buffer = io.BytesIO()
            Image.fromarray(np.zeros((size + 3, size, 3), np.uint8)).save(buffer, format="PNG")
            files[f"images/{n - 1}.png"] = buffer.getvalue()
        elif b == 9:
            data["applied_transform"] = draw(st.sampled_from([np.eye(4)[:3].tolist(), "x", [[1, 2]]]))
        elif b == 10:
            target["time"] = bad_number
        elif b == 12:
            target["fl_x"] = size * 3.0  # non-square pixels
        elif b == 13:
            data["cx"] = size  # off-centre principal point
        elif b == 14:
            for frame in frames:  # every camera at the same place
                frame["transform_matrix"] = np.eye(4).tolist()
    if 11 in breakages:
        return draw(st.sampled_from([[], "scene", 3, None])), files  # not an object at all
    return data, files


@fuzz(30)
@given(scene=scenes())
def test_generated_scenes(scene: tuple[Any, dict[str, bytes]], tmp_path: Path) -> None:
    data, files = scene
    with Case(tmp_path) as case:
        folder = case.dir / "scene"
        for name, blob in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(blob)
        (folder / "transforms.json").write_text(json.dumps(data, allow_nan=True))
        case.check("edit", "--scene", str(folder), "--source", "a red mug", "--target", "a blue mug", "--prior", "toyworld",
                   "--reconstruct-steps", "1", "--steps", "1", "--prior.num-references", "8", "--prior.resolution", "16",
                   "--sampler.width", "16", "--sampler.height", "16", "--sampler.batch-size", "1", "--representation", "gaussians",
                   "--representation.num-points", "50", "--log.no-progress", "--log.eval-views", "1", "--log.export-formats", "splat",
                   "--device", "cpu", "--out", str(case.out))


# ---------------------------------------------------------------------- prompts (and the folders they name)
PROMPTS = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["../../etc/x", "a/b\\c", "CON", "con", "NUL.txt", "lpt9", "", " ", ".", "..", "~", "/", "C:\\Windows\\x",
                     "x" * 5000, "a red mug\x00", "\x1b[31ma red mug", "一只红色的杯子", "ａ ｒｅｄ ｍｕｇ", "a red mug\n--steps 1e9",
                     "$(touch /tmp/owned)", "`id`", "a red mug; rm -rf ~", "%s%n", "\u202ea red mug"]),
)


@fuzz(50)
@given(prompt=PROMPTS, prior=st.sampled_from(["user-mesh", "user-mesh", "catalogue"]))
def test_generated_prompts_make_folders_inside_out(prompt: str, prior: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    cube_mesh: Path) -> None:
    with Case(tmp_path) as case:
        mesh = ["--prior.mesh", str(cube_mesh)] if prior == "user-mesh" else []  # with a user mesh every prompt names it
        code = case.check("run", *TINY_FLAGS, *CHEAP, *mesh, "--prompt", prompt, "--out", str(case.out))
        if prior == "user-mesh":
            assert code == 0
            (run,) = [p.parent for p in case.out.rglob("config.yaml")]
            assert run.parent.parent == case.out and run.parent.name not in ("", ".", "..")


@pytest.fixture(scope="module")
def cube_mesh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import trimesh

    path = tmp_path_factory.mktemp("mesh") / "cube.ply"
    path.write_bytes(trimesh.creation.box().export(file_type="ply"))
    return path


def test_the_documented_prompts_make_folders_inside_out(tmp_path: Path, cube_mesh: Path) -> None:
    for prompt, folder in [("../../etc/x", "etc-x"), ("a/b\\c", "a-b-c"), ("CON", "con-prompt"), ("", "prompt")]:
        out = tmp_path / folder
        proc = run_cli("run", *TINY_FLAGS, *CHEAP, "--prior.mesh", str(cube_mesh), "--prompt", prompt, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        assert [p.name for p in out.iterdir()] == [folder]
    assert not (tmp_path.parent / "etc").exists()
