"""Streamed result files (fer_common.infer.writers) and the result model's views (fer_common.results)."""

import csv
import json
import os

import numpy as np
import pytest

from fer_common.files import printable

from fer_common.errors import FERError
from fer_common.results import Face, Result, make_result, table_columns, to_table
from fer_common.infer.writers import ResultWriter, meta_path

NAMES = ["Angry", "Happy", "Sad"]
META = {"toolkit": "fer-toolkit", "version": "test", "model": "m.onnx", "model_sha256": "a" * 64,
        "classes": NAMES, "tta": True, "detector": "yunet", "embedding": False}


def results(n=6, faces=lambda i: i % 3):
    """n Results: image i has faces(i) faces (0 -> error 'no face found'); image 4 is unreadable."""
    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        if i == 4:
            out.append(make_result(f"img{i}.png", NAMES, error="cannot decode", index=i))
            continue
        k = faces(i)
        p = rng.dirichlet(np.ones(len(NAMES)), k)
        out.append(make_result(f"img{i}.png", NAMES, [[10 * j, 0, 10, 10] for j in range(k)], p,
                               rng.normal(size=(k, 4)), np.full(k, 0.9), size=(40, 20), index=i))
    return out


def write(path, rs, **kw):
    with ResultWriter(path, NAMES, dict(META), **kw) as w:
        for r in rs:
            w.write(r)


def test_json_round_trip_with_embedding():
    r = results()[1]
    d = json.loads(r.to_json())
    assert d["source"] == "img1.png" and d["size"] == [40, 20] and d["error"] is None
    face = d["faces"][0]
    assert face["box"] == [0, 0, 10, 10] and face["score"] == 0.9 and len(face["embedding"]) == 4
    assert face["top_emotion"] == r.faces[0].top_emotion and face["confidence"] == round(r.faces[0].confidence, 6)
    assert "embedding" not in json.loads(r.to_json(embedding=False))["faces"][0]


def test_every_image_is_a_row_and_the_table_has_the_csv_columns(tmp_path):
    rs = results()
    write(tmp_path / "out.csv", rs)
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == table_columns(NAMES) and {len(row) for row in rows} == {len(rows[0])}
    table = to_table(rs)
    assert list(table[0]) == rows[0] and len(table) == len(rows) - 1
    sources = [row[0] for row in rows[1:]]
    assert set(sources) == {r.source for r in rs}                   # no-face and unreadable images too
    errors = {row[0]: row[-1] for row in rows[1:]}
    assert errors["img0.png"] == "no face found" and errors["img4.png"] == "cannot decode"
    write(tmp_path / "out.jsonl", rs)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [d["source"] for d in lines] == [r.source for r in rs]
    assert json.loads(meta_path(tmp_path / "out.jsonl").read_text())["model_sha256"] == "a" * 64


def test_dataframe_view():
    pd = pytest.importorskip("pandas")
    from fer_common.results import to_dataframe

    frame = to_dataframe(results())
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == table_columns(NAMES)
    assert frame["face"].notna().sum() == sum(len(r.faces) for r in results())     # one row per face
    assert set(frame["source"]) == {r.source for r in results()}                   # and every image
    # an image without a face leaves integer cells blank, and they stay integers (not float64)
    for column in ("face", "faces", "x", "y", "w", "h", "width", "height", "track_id", "frame"):
        assert str(frame[column].dtype) == "Int64", column
    assert frame["x"].isna().any() and frame.loc[frame["face"] == 2, "x"].tolist() == [10, 10]


def test_a_face_prints_short():
    face = results()[1].faces[0]
    text = repr(face)
    assert text.startswith("Face(box=(0, 0, 10, 10), top_emotion=") and "score=0.900" in text
    assert "embedding=<4 floats>" in text and len(text) < 150 and "array" not in text
    assert repr(results()[2]).count("Face(") == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_cuts_only_what_does_not_parse(tmp_path, suffix):
    rs = results(9, faces=lambda i: 2)
    full, cut = tmp_path / f"full{suffix}", tmp_path / f"cut{suffix}"
    write(full, rs)
    data = full.read_bytes()
    lines = data.splitlines(keepends=True)
    head = 1 if suffix == ".csv" else 0
    per_image = 2 if suffix == ".csv" else 1
    keep = head + 3 * per_image
    cut.write_bytes(b"".join(lines[:keep]) + lines[keep][:9])       # killed in the middle of a line
    meta_path(cut).write_bytes(meta_path(full).read_bytes())
    with pytest.raises(FERError, match="--resume to continue it, or --overwrite"):
        ResultWriter(cut, NAMES, dict(META))
    with ResultWriter(cut, NAMES, dict(META), resume=True) as w:
        assert w.repaired_bytes == 9 and w.done == {r.source for r in rs[:3]}
        for r in rs[3:]:
            w.write(r)
    assert cut.read_bytes() == data


def test_resume_keeps_a_complete_last_record_without_its_newline(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, results(3))
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    with ResultWriter(path, NAMES, dict(META), resume=True) as w:
        assert w.repaired_bytes == 0 and len(w.done) == 3
    assert path.read_bytes().endswith(b"}\n") and len(path.read_text().splitlines()) == 3


def test_resume_drops_an_image_cut_between_its_face_rows(tmp_path):
    path = tmp_path / "r.csv"
    rs = results(4, faces=lambda i: 3)
    write(path, rs)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1 + 3 * 3 + 1]))       # image 3 has 1 of its 3 rows
    with ResultWriter(path, NAMES, dict(META), resume=True) as w:
        assert w.done == {"img0.png", "img1.png", "img2.png"}
        w.write(rs[3])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert [r[0] for r in rows].count("img3.png") == 3 and len(rows) == 12


def test_resume_refuses_another_model_or_settings(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, results(2))
    other = dict(META, model_sha256="b" * 64)                      # same classes, other weights
    with pytest.raises(FERError, match="model_sha256"):
        ResultWriter(path, NAMES, other, resume=True)
    with pytest.raises(FERError, match="tta"):
        ResultWriter(path, NAMES, dict(META, tta=False), resume=True)
    meta_path(path).unlink()
    with pytest.raises(FERError, match="missing"):
        ResultWriter(path, NAMES, dict(META), resume=True)


@pytest.mark.parametrize("content", [
    '{"source": null, "faces": []}\n{"source": "b", "faces": []}\n',
    '{"source": "a", "faces": 3}\n{"source": "b", "faces": []}\n',
    "[" * 100000 + "\n{}\n",
    '{"source": "' + "x" * 200000 + '", "faces": [], "error": 5}\n{"source": "b", "faces": []}\n',
])
def test_malformed_resume_files_are_one_line(tmp_path, content):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    meta_path(path).write_text(json.dumps(META))
    with pytest.raises(FERError, match="cannot resume"):
        ResultWriter(path, NAMES, dict(META), resume=True)


def test_malformed_csv_field_is_one_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(",".join(table_columns(NAMES)) + "\n" + '"' + "x" * 200000 + '",1\n')
    meta_path(path).write_text(json.dumps(META))
    with pytest.raises(FERError, match="cannot resume"):
        ResultWriter(path, NAMES, dict(META), resume=True)


@pytest.mark.parametrize("flags", [{"overwrite": True}, {"resume": True}])
def test_a_link_is_never_written_through(tmp_path, flags):
    precious = tmp_path / "bashrc"
    precious.write_text("keep me\n")
    link = tmp_path / "results.jsonl"
    link.symlink_to(precious)
    with pytest.raises(FERError, match="symbolic link"):
        write(link, results(2), **flags)
    assert precious.read_text() == "keep me\n" and link.is_symlink()


def test_a_hard_link_is_never_written(tmp_path):
    precious = tmp_path / "precious.csv"
    precious.write_text("keep me\n")
    os.link(precious, tmp_path / "out.csv")
    with pytest.raises(FERError, match="hard links"):
        write(tmp_path / "out.csv", results(2), overwrite=True)
    assert precious.read_text() == "keep me\n"


def test_two_runs_never_write_one_file(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultWriter(path, NAMES, dict(META)) as first:
        with pytest.raises(FERError, match="another run"):
            ResultWriter(path, NAMES, dict(META), overwrite=True)
        first.write(results(1)[0])
    assert len(path.read_text().splitlines()) == 1


def test_an_output_deleted_during_the_run_is_an_error(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    w = ResultWriter(folder / "r.jsonl", NAMES, dict(META))
    w.write(results(1)[0])
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    with pytest.raises(FERError, match="deleted"):
        w.close()


def test_file_names_that_are_not_utf8(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")                       # Latin-1 bytes: a lone surrogate in Python
    r = make_result(name, NAMES, [[0, 0, 4, 4]], [[0.2, 0.5, 0.3]], size=(4, 4))
    for suffix in (".csv", ".jsonl"):
        write(tmp_path / f"r{suffix}", [r])
        (tmp_path / f"r{suffix}").read_bytes().decode("utf-8")     # strict UTF-8: the bytes escaped (\xe9)
        with ResultWriter(tmp_path / f"r{suffix}", NAMES, dict(META), resume=True) as w:
            assert w.done == {printable(name)} == {"caf\\xe9.png"}     # what inference.py --resume looks up


def test_face_and_result_basics():
    face = Face((1, 2, 3, 4), {"Happy": 0.7, "Sad": 0.3})
    assert face.top_emotion == "Happy" and face.confidence == 0.7
    assert Result("x").to_dict()["faces"] == []
