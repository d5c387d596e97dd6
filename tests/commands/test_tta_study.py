"""benchmarks/tta_study.py: the view sets' accuracies on class folders, as typed."""

import subprocess
import sys

import numpy as np

from benchmarks import tta_study
from synthetic import REPO


def test_views_keep_the_crop_size_and_the_table_covers_every_set(tiny_data, capsys):
    face = np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)
    for name, make in tta_study.VIEWS.items():
        assert make(face).shape == (48, 48), name
    assert np.array_equal(tta_study.VIEWS["mirror"](face), face[:, ::-1])
    assert all(v in tta_study.VIEWS for views in tta_study.SETS.values() for v in views)

    tta_study.main(tta_study.get_args_parser().parse_args(["--data", str(tiny_data / "val_new")]))
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == len(tta_study.SETS)
    assert all(0 <= float(row.split("|")[2].strip().rstrip("%")) <= 100 for row in rows)


def test_a_missing_folder_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.tta_study", "--data", str(tmp_path / "nowhere")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
