"""The light install: inference with the shipped ONNX files needs no PyTorch, and the `fer` command works."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
import venv
import zipfile

import pytest

from fer_common.commands import COMMANDS
from fer_common.shipped import ORT_FILES
from helpers_models import TEST_VIDEO
from synthetic import REPO, make_folder_dataset

TEST_IMAGE = REPO / "Test_files" / "IMG_test_1.jpg"
HEAVY = ("torch", "torchvision", "timm", "onnx", "matplotlib",
         # the [serve] extra: fer serve's web stack is not in the light install either
         "starlette", "uvicorn", "prometheus_client", "python_multipart", "multipart", "httptools", "uvloop")


def run_fer(args, tmp_path, block_heavy: bool):
    """`python -m fer_common ARGS` in a subprocess; with block_heavy, importing torch & co. fails there."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if block_heavy:
        site = tmp_path / "blocked"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text("import sys\nfor m in %r:\n    sys.modules[m] = None\n" % (HEAVY,))
        env["PYTHONPATH"] = f"{site}{os.pathsep}{REPO}"
    return subprocess.run([sys.executable, "-m", "fer_common", *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_image_and_video_give_the_same_results_without_torch(tmp_path):
    outputs = {}
    for blocked in (True, False):
        image = run_fer(["analyse", TEST_IMAGE, "--json"], tmp_path, blocked)
        assert image.returncode == 0, image.stderr
        log = tmp_path / f"log_{blocked}.csv"
        video = run_fer(["video", "--video", TEST_VIDEO, "--no_display", "--max_frames", 30, "--no_threaded",
                         "--log_csv", log],
                        tmp_path, blocked)
        assert video.returncode == 0, video.stderr
        outputs[blocked] = (json.loads(image.stdout), log.read_text())
    assert outputs[True] == outputs[False]
    assert outputs[True][0][0]["faces"][0]["top_emotion"] == "Happy"


def test_a_pth_model_without_torch_names_the_extra(tmp_path):
    r = run_fer(["analyse", TEST_IMAGE, "--checkpoint", REPO / "models" / "fer_model.pth"], tmp_path, True)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "fer-toolkit[train]" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_prints_its_help_without_torch(tmp_path, name):
    r = run_fer([name, "--help"], tmp_path, True)
    assert r.returncode == 0, r.stderr
    assert f"usage: fer {name}" in r.stdout and "Traceback" not in r.stderr


def test_evaluate_and_calibrate_an_onnx_model_without_torch(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=(3,), splits=("test",))
    r = run_fer(["evaluate", "--checkpoint", REPO / "models" / "fer_model.int8.onnx", "--data", data / "test",
                 "--output_dir", tmp_path / "eval"], tmp_path, True)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout.lower() and (tmp_path / "eval").is_dir()
    # fitting the temperature needs no torch either; writing the ONNX file needs the onnx package, said in one line
    r = run_fer(["calibrate", REPO / "models" / "fer_model.int8.onnx", "--data", data / "test",
                 "--output", tmp_path / "c.onnx", "--min_images", 1], tmp_path, True)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "fer-toolkit[train]" in r.stderr


@pytest.mark.parametrize("args", [["train", "--dataset_path", "data"], ["export", "m.pth", "m.onnx"],
                                  ["average", "a.pth", "b.pth", "--output", "c.pth"], ["pretrained"]])
def test_a_command_that_needs_torch_says_so_in_one_line(tmp_path, args):
    for name in ("m.pth", "a.pth", "b.pth"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    (tmp_path / "data").mkdir(exist_ok=True)
    r = run_fer(args, tmp_path, True)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "fer-toolkit[train]" in last


def test_fer_serve_without_its_extra_names_it_in_one_line(tmp_path):
    r = run_fer(["serve", "--port", 0], tmp_path, True)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: fer serve needs ") and "pip install 'fer-toolkit[serve]'" in last


def test_fer_lists_its_commands_and_refuses_unknown_ones(tmp_path):
    r = run_fer([], tmp_path, True)
    assert r.returncode == 2 and "analyse" in r.stdout and "train" in r.stdout
    r = run_fer(["nonsense"], tmp_path, True)
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_wheel_installs_light_and_runs_fer(tmp_path):
    """A wheel of the tree in a fresh venv with the base requirements only: `fer analyse` works, torch is absent."""
    src, wheels = tmp_path / "src", tmp_path / "wheel"       # a copy: the build leaves nothing in the repository
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "fer_common", src / "fer_common", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "models", src / "models", ignore=shutil.ignore_patterns("evaluation*"))
    shutil.copytree(REPO / "web", src / "web", ignore=shutil.ignore_patterns("node_modules"))

    def build(out):
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(out), str(src)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        shutil.rmtree(src / "build", ignore_errors=True)
        return next(out.glob("*.whl"))

    # a clean clone before `npm ci`: the wheel still builds, with the page and without the runtime
    with zipfile.ZipFile(build(tmp_path / "bare")) as z:
        names = set(z.namelist())
    assert "fer_common/web/index.html" in names and not any("onnxruntime-web" in n for n in names)
    ort = REPO / "web" / "node_modules"
    has_ort = (ort / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs").is_file()
    if has_ort:
        (src / "web" / "node_modules").symlink_to(ort.resolve(), target_is_directory=True)
    wheel = build(wheels)
    with zipfile.ZipFile(wheel) as z:     # only the runtime files the page loads, not the whole npm package
        shipped = sorted(n.rsplit("/", 1)[1] for n in z.namelist() if "onnxruntime-web" in n)
    assert shipped == (sorted(ORT_FILES) if has_ort else [])
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    r = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(wheel)], capture_output=True, text=True, timeout=900)
    if r.returncode != 0 and "Could not find a version" in r.stderr:
        pytest.skip(f"the package index is not reachable: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(bin_dir / "fer"), "analyse", str(TEST_IMAGE)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Happy" in r.stdout and "fer_model.int8.onnx" in r.stdout
    r = subprocess.run([str(bin_dir / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert r.returncode != 0                     # the base install has no PyTorch
    r = subprocess.run([str(bin_dir / "python"), "-c", "import starlette"], capture_output=True, text=True)
    assert r.returncode != 0                     # nor the [serve] extra's web stack, yet `fer serve --help` works
    for name in COMMANDS:                       # every command's --help, as a new user tries them (issue 30)
        r = subprocess.run([str(bin_dir / "fer"), name, "--help"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and f"usage: fer {name}" in r.stdout, (name, r.stderr)
    data = make_folder_dataset(tmp_path / "data", per_class=(2,), splits=("test",))
    r = subprocess.run([str(bin_dir / "fer"), "evaluate", "--checkpoint", "default", "--data", str(data / "test"),
                        "--output_dir", str(tmp_path / "eval")], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0 and "accuracy" in r.stdout.lower(), r.stderr
    r = subprocess.run([str(bin_dir / "fer"), "train", "--dataset_path", str(data)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 1 and "fer-toolkit[train]" in r.stderr and "Traceback" not in r.stderr
    # the installed `fer web` serves the page from the package, the runtime and the models with it
    proc = subprocess.Popen([str(bin_dir / "fer"), "web", "--port", "0"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not has_ort:
            assert proc.wait(timeout=60) == 1 and "npm ci" in proc.stderr.read()
            return
        url = re.search(r"http://\S+/", line).group(0)
        with urllib.request.urlopen(url, timeout=10) as page:
            assert b"Nothing is uploaded" in page.read()
        for path in ("web/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
                     "models/fer_model.int8.onnx", "web/settings.json"):
            with urllib.request.urlopen(url + path, timeout=10) as r:
                assert r.status == 200 and r.read(4)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)


def test_fer_names_fer_commands_not_the_checkouts_scripts(tmp_path):
    # a pip user has `fer train`, not fine_tuning.py: help and errors say what the user has (issue 34)
    r = run_fer(["train", "--help"], tmp_path, False)
    assert r.returncode == 0 and "fine_tuning.py" not in r.stdout and "fer train" in r.stdout
    r = run_fer(["train", "--dataset_path", tmp_path / "nothing"], tmp_path, False)
    assert r.returncode == 1 and "fer split" in r.stderr and "validation_split.py" not in r.stderr
    r = run_fer(["analyse", TEST_IMAGE, "--model_type", "advanced"], tmp_path, True)
    assert r.returncode == 1 and "fer train-advanced" in r.stderr and "advanced_fine_tuning.py" not in r.stderr
