"""fer_common.infer.cluster: the bulk engine on a local Ray cluster of 2 CPUs gives the local engine's rows, survives a
killed worker, and writes Parquet that pandas reads; `inference.py --engine ray` as a user types it."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fer_common.infer import writers

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'fer-toolkit[cluster]'; make test "
                                        "installs it from requirements-dev.txt)")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")
pd = pytest.importorskip("pandas", reason="pandas is not installed (comes with ray[data])")

from fer_common.infer import bulk, cluster  # noqa: E402
from fer_common.errors import FERError  # noqa: E402
from fer_common.infer.predictor import Predictor  # noqa: E402
from fer_common.results import probability_matrix, to_table  # noqa: E402
from synthetic import REPO, make_crops, run_script  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))          # this file, which workers import (CrashOnce)
TESTS = os.path.dirname(HERE)                               # tests/: synthetic, helpers_models


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for this module; workers can import this file (for CrashOnce)."""
    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    path = os.pathsep.join([str(REPO), TESTS, HERE, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from helpers_models import shared_models

    return shared_models(tmp_path_factory) / "fer_model.onnx"


@pytest.fixture(scope="module")
def predictor(model_path):
    return Predictor(model_path, device="cpu")


def settings_for(predictor, **extra):
    return dict(cluster.classifier_settings(predictor, tta=False, device="cpu", provider="cpu"), **extra)


def assert_same_rows(got, expected, class_names):
    assert [r.index for r in got] == list(range(len(expected)))
    assert [r.source for r in got] == [r.source for r in expected]
    assert [r.error for r in got] == [r.error for r in expected]
    assert [r.size for r in got] == [r.size for r in expected]
    for g, e in zip(got, expected):
        assert [f.box for f in g.faces] == [f.box for f in e.faces]
        assert [f.score for f in g.faces] == pytest.approx([f.score for f in e.faces], abs=1e-5)
        np.testing.assert_allclose(probability_matrix(g, class_names), probability_matrix(e, class_names), atol=1e-5)
        for fg, fe in zip(g.faces, e.faces):
            np.testing.assert_allclose(fg.embedding, fe.embedding, atol=1e-5)


class CrashOnce(cluster.BatchClassifier):
    """Kills its worker process (os._exit) at its second batch, once per run: the marker file says it happened."""

    def __init__(self, marker, **settings):
        super().__init__(**settings)
        self.marker, self.calls = marker, 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 2:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return super().__call__(batch)


def plain(frame) -> list:
    """A DataFrame's cells as plain values, every missing one None (pandas reads nulls as None or NaN)."""
    return frame.astype(object).where(frame.notna(), None).values.tolist()


def test_ray_rows_equal_the_local_engines_and_parquet_reads_back(ray_cluster, predictor, tmp_path):
    paths = make_crops(tmp_path / "crops", 30, bad={11})
    local = list(bulk.iter_results(predictor, paths, batch_size=4, workers=1))
    got = list(cluster.iter_results_ray(paths, settings_for(predictor), batch_size=4, workers=2))
    assert_same_rows(got, local, predictor.class_names)
    assert got[11].error == "cannot decode" and got[11].faces == [] and got[11].size is None

    out = tmp_path / "out.parquet"
    with writers.ParquetWriter(out, predictor.class_names, {"model": "m"}, embedding=True, row_group=7) as w:
        for r in got:
            w.write(r)
    frame = pd.read_parquet(out)                    # the .csv's columns, one row per face, in input order
    expected = pd.DataFrame(to_table(local, predictor.class_names))
    assert list(frame.columns) == list(expected.columns) + ["embedding"]
    assert plain(frame.drop(columns="embedding")) == plain(expected)
    np.testing.assert_allclose(frame.embedding[0], local[0].faces[0].embedding, atol=1e-6)
    assert frame.embedding[11] is None and (tmp_path / "out.parquet.meta.json").is_file()
    with pytest.raises(FERError, match="already exists"):
        writers.check_results_file(out)
    with pytest.raises(FERError, match="cannot be continued"):
        writers.check_results_file(out, resume=True)


def test_a_killed_worker_is_retried_and_detected_faces_equal_the_local_engines(ray_cluster, predictor, tmp_path):
    """A worker dies at its second batch: Ray restarts it and runs its block again; every image comes once, and
    the detector's settings travel to the workers (the shipped YuNet finds the local engine's boxes)."""
    from fer_common.infer.detection import FaceDetector

    paths = make_crops(tmp_path / "crops", 16)
    photo = cv2.imread(str(REPO / "Test_files" / "IMG_test_1.jpg"))
    for i, image in enumerate([photo, cv2.flip(photo, 1)]):
        paths.insert(5 + 7 * i, str(tmp_path / f"photo{i}.jpg"))
        cv2.imwrite(paths[5 + 7 * i], image)
    local = list(bulk.iter_results(predictor, paths, FaceDetector, batch_size=2, workers=1))
    marker = tmp_path / "crashed"
    settings = settings_for(predictor, detector={"kind": "yunet", "detect_size": 320, "min_face": 24},
                            marker=str(marker))
    got = list(cluster.iter_results_ray(paths, settings, batch_size=2, workers=2, classifier=CrashOnce))
    assert marker.exists()                          # a worker did die mid-run
    assert [r.source for r in got] == paths         # every image once, in input order
    assert len(got[5].faces) >= 1 and len(got[12].faces) >= 1
    assert_same_rows(got, local, predictor.class_names)


def test_inference_script_with_the_ray_engine_writes_the_local_engines_rows(ray_cluster, tmp_path):
    """As a user types it, names that are not UTF-8 included; Ray's notice about its own actors stays out."""
    folder = tmp_path / "crops"
    paths = make_crops(folder, 20, bad={5})
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9.png")      # a name copied from a Latin-1 system
    try:
        os.rename(os.fsencode(paths[7]), latin1)
    except OSError:     # a file system that takes only UTF-8 names
        pass
    common = [folder, "--no_detect", "--batch_size", "4"]
    r = run_script("inference.py", *common, "--output", tmp_path / "local.csv", timeout=120)
    assert r.returncode == 0, r.stderr
    r = run_script("inference.py", *common, "--engine", "ray", "--address", ray_cluster, "--workers", "2",
                   "--output", tmp_path / "ray.parquet", timeout=180)
    assert r.returncode == 0, r.stderr
    assert "20 images: 19 read, 1 skipped" in r.stdout + r.stderr
    assert "core_worker" not in r.stderr and "Traceback" not in r.stderr
    assert plain(pd.read_parquet(tmp_path / "ray.parquet")) == plain(pd.read_csv(tmp_path / "local.csv"))
    assert (tmp_path / "ray.parquet.meta.json").read_text() == (tmp_path / "local.csv.meta.json").read_text()


def test_native_stderr_filter_drops_rays_actor_notice_and_passes_the_rest():
    """What native code writes to fd 2 during a job: Ray's notice about its actors' constructor arguments (one
    write, as Ray logs) goes, everything else (a progress bar without a newline, Ray's other lines, a partial
    last line) comes through."""
    notice = (b"[2026-12-03 07:05:02,840 E 3039 3039] core_worker.cc:2465: Actor with class name: 'MapWorker(X)' "
              b"and ID: 'ab' has constructor arguments in the object store and max_restarts > 0. See ...\n")
    other = b"[2026-12-03 07:05:03,000 E 3039 3039] core_worker.cc:99: a real error\n"
    code = (f"import os, sys; sys.path.insert(0, {str(REPO)!r}); from fer_common.infer import cluster\n"
            f"with cluster._native_stderr_without():\n"
            f"    for part in [b'\\rimages: 0%', {notice!r}, {other!r}, b'\\rimages: 100%\\n',"
            f" b'[partial']:\n"
            f"        os.write(2, part)\n"
            f"print('done', file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b"\rimages: 0%" + other + b"\rimages: 100%\n[partialdone\n"


def test_without_ray_the_engine_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)         # import ray now raises ImportError
    with pytest.raises(FERError, match=r"pip install 'fer-toolkit\[cluster\]'"):
        cluster.import_ray()
