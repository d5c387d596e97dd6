"""benchmarks/tta_study.py: the view sets' accuracies on class folders, as typed."""

import subprocess
import sys

import numpy as np

from benchmarks import tta_study
from fer_common.infer.tta import VIEW_SETS
from synthetic import REPO


def test_views_keep_the_crop_size_and_the_table_covers_every_set(tiny_data, capsys):
    faces = np.arange(2 * 48 * 48, dtype=np.uint8).reshape(2, 1, 48, 48)    # N, C, H, W
    for name, make in tta_study.VIEWS.items():
        assert make(faces).shape == faces.shape and make(faces).dtype == np.uint8, name
    assert np.array_equal(tta_study.VIEWS["mirror"](faces), faces[..., ::-1])
    assert all(v in tta_study.VIEWS for views in tta_study.SETS.values() for v in views)
    # --tta_views' sets are among the sets studied
    assert all(list(views) in tta_study.SETS.values() for views in VIEW_SETS.values() if len(views) > 1)

    tta_study.main(tta_study.get_args_parser().parse_args(["--data", str(tiny_data / "val_new")]))
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == len(tta_study.SETS)
    assert all(0 <= float(row.split("|")[2].strip().rstrip("%")) <= 100 for row in rows)


def test_a_missing_folder_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.tta_study", "--data", str(tmp_path / "nowhere")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
