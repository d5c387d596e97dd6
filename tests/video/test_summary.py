import json

import numpy as np
import pytest

from synthetic import frame_result

from fer_common.cli import FERError
from fer_common.video.summary import FaceSummary, plot_summary, summarise_csv
from fer_common.results import table_columns as csv_header

CLASSES = ["calm", "excited", "bored"]          # any label set, not only FER-2013's seven
P = {"calm": "0.7,0.2,0.1", "excited": "0.1,0.8,0.1", "bored": "0.2,0.2,0.6"}


def row(frame, time, track, top, probs):
    """One face's row of a --log_csv file (fer_common.results.table_columns)."""
    return f"v.mp4,{frame},{time},64,48,1,1,10,20,30,30,,{track},{top},0.5,{probs},"


def write_log(path, rows, classes=CLASSES):
    """rows: (frame, time, track id, top class); probabilities follow the top class."""
    lines = [",".join(csv_header(classes))]
    lines += [row(f, t, i, top, P[top]) for f, t, i, top in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_summary_of_a_known_log(tmp_path):
    log = write_log(tmp_path / "log.csv", [
        (0, 0.0, 1, "excited"), (1, 0.1, 1, "excited"), (1, 0.1, 2, "bored"),
        (2, 0.2, 1, "calm"), (2, 0.2, 2, "calm"), (3, 0.3, 1, "excited"),
    ])
    summary = summarise_csv(log)
    assert summary.class_names == CLASSES and summary.face_ids == [1, 2]
    one, two = summary.faces()
    assert (one.face_id, one.first_s, one.last_s, one.frames) == (1, 0.0, 0.3, 4)
    assert one.shares == pytest.approx({"calm": 0.25, "excited": 0.75, "bored": 0.0})
    assert one.dominant == "excited"
    assert (two.first_s, two.last_s, two.frames) == (0.1, 0.2, 2)
    assert two.shares == pytest.approx({"calm": 0.5, "excited": 0.0, "bored": 0.5})
    assert two.dominant == "calm"                        # a tie: the first in the model's class order
    data = summary.to_dict(source="log.csv")
    assert [f["face_id"] for f in data["faces"]] == [1, 2] and data["class_names"] == CLASSES
    assert data["faces"][0]["emotion_shares"] == {"calm": 0.25, "excited": 0.75, "bored": 0.0}
    table = summary.table().splitlines()
    assert len(table) == 3 and table[1].split()[:4] == ["#1", "0.00-0.30", "4", "excited"] and "75%" in table[1]
    times, probs = summary.series(1)
    assert times.tolist() == [0.0, 0.1, 0.2, 0.3] and probs.shape == (4, 3)
    np.testing.assert_allclose(probs[2], [0.7, 0.2, 0.1])


def test_results_and_their_log_give_the_same_summary(tmp_path):
    live = FaceSummary(CLASSES)
    for k, p in enumerate([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]):
        live.write(None, frame_result(k, k / 10, [[0, 0, 5, 5]], [4], [p], CLASSES))
    tops = ["calm", "excited", "bored"]
    from_log = summarise_csv(write_log(tmp_path / "log.csv", [(k, k / 10, 4, tops[k]) for k in range(3)]))
    assert [f.to_dict() for f in live.faces()] == [f.to_dict() for f in from_log.faces()]


@pytest.mark.parametrize("content, expect", [
    ("name,score\nx,1\n", "not a real_time_video.py --log_csv file"),
    ("", "not a real_time_video.py --log_csv file"),
    (",".join(csv_header(CLASSES)) + "\n" + row(0, "zero", 1, "calm", "1,0,0") + "\n", "line 2"),
    (",".join(csv_header(CLASSES)) + "\n" + row(0, 0, 1, "happy", "1,0,0") + "\n", "'happy' is none of the classes"),
    (",".join(csv_header(CLASSES)) + "\n" + row(0, 0, 1, "calm", "1,0") + "\n", "18 columns"),
])
def test_bad_logs_are_one_clear_error(tmp_path, content, expect):
    log = tmp_path / "log.csv"
    log.write_text(content)
    with pytest.raises(FERError, match=expect):
        summarise_csv(log)
    with pytest.raises(FERError, match="log not found"):
        summarise_csv(tmp_path / "missing.csv")


def test_empty_log_has_no_faces(tmp_path):
    summary = summarise_csv(write_log(tmp_path / "log.csv", []))
    assert summary.faces() == [] and summary.table() == "no faces found"


def test_plot_has_one_panel_per_face(tmp_path):
    pytest.importorskip("matplotlib")
    import cv2

    log = write_log(tmp_path / "log.csv", [(k, k / 10, i, ["calm", "excited", "bored"][(k + i) % 3])
                                          for k in range(10) for i in (1, 2)])
    out = tmp_path / "plot.png"
    plot_summary(summarise_csv(log), out)
    image = cv2.imread(str(out))
    assert image is not None and image.std() > 10                    # drawn, not blank
    one = tmp_path / "one.png"
    plot_summary(summarise_csv(write_log(tmp_path / "one.csv", [(0, 0.0, 1, "calm"), (1, 0.1, 1, "bored")])), one)
    assert cv2.imread(str(one)).shape[0] < image.shape[0]           # one face: a shorter figure than two
    plot_summary(FaceSummary(CLASSES), tmp_path / "none.png")        # no faces: still a picture, saying so
    assert cv2.imread(str(tmp_path / "none.png")) is not None


def _strict(text):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("row, expect", [
    (row(0, "inf", 1, "calm", "1,0,0"), "line 2: time or a probability is not finite"),
    (row(0, "nan", 1, "calm", "1,0,0"), "line 2: time or a probability is not finite"),
    (row(0, 0, 1, "calm", "nan,0,0"), "line 2: time or a probability is not finite"),
    (row(0, 0, 1, "calm", "1,-inf,0"), "line 2: time or a probability is not finite"),
])
def test_non_finite_log_values_are_refused(tmp_path, row, expect):
    log = tmp_path / "log.csv"
    log.write_text(",".join(csv_header(CLASSES)) + "\n" + row + "\n")
    with pytest.raises(FERError, match=expect):
        summarise_csv(log)


def test_summary_json_is_strict(tmp_path):
    summary = FaceSummary(CLASSES)
    with pytest.raises(FERError, match="not a finite number"):
        summary.add(1, float("inf"), [0.2, 0.3, 0.5])
    summary.add(1, 0.0, [float("nan"), 0.3, 0.5])             # a broken model's row: counted, never written as NaN
    summary.add(1, 0.05, [0.1, 0.8, 0.1])
    text = json.dumps(summary.to_dict(source="x"), allow_nan=False)
    assert _strict(text)["faces"][0]["frames"] == 2


def test_class_names_matplotlib_would_read_as_mathtext(tmp_path):
    pytest.importorskip("matplotlib")
    names = ["a$b", "$x^2$", "c_d"]
    summary = FaceSummary(names)
    for k in range(3):
        summary.write(None, frame_result(k, k / 10, [[0, 0, 5, 5]], [1], [[0.2, 0.5, 0.3]], names))
    plot_summary(summary, tmp_path / "p.png", title="costs $5")
    assert (tmp_path / "p.png").stat().st_size > 1000
