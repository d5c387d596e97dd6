"""recipes/campaign.py: the model card's stages with the real commands' flags, a tiny campaign end to end and again
(every stage skipped), one line on the first failing stage, the time limit, and the transfer to and from the
lent GPU machine (pack, unpack, bring back)."""

import importlib
import json
import subprocess
import tarfile

import pytest

from recipes.campaign import PROFILES, build_plan, finished_models, get_args_parser, is_done
from recipes.transfer import bring_back, pack, unpack
from synthetic import make_folder_dataset, run_script

SPLITS = ("train_new", "val_new", "test")
# Which parser checks each stage's flags: the script or `python -m fer_common X` it runs.
PARSERS = {"fine_tuning.py": "fer_common.commands.train", "evaluate.py": "fer_common.commands.evaluate",
           "benchmarks/robustness.py": "benchmarks.robustness"}


def campaign_data(root, per_class=(4, 2, 2)):
    """train_new / val_new / test with a few learnable synthetic faces per class: the tiny profile's data."""
    return make_folder_dataset(root, per_class=per_class, splits=SPLITS)


def plan_for(tmp_path, *argv):
    return build_plan(get_args_parser().parse_args(["--dataset_path", str(tmp_path / "d"), "--out",
                                                    str(tmp_path / "o"), *argv]))


def stage(plan, name):
    return next(s for s in plan.stages if s.name == name)


def flag(cmd, name):
    return [cmd[i + 1] for i, x in enumerate(cmd) if x == name]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_stage_passes_its_commands_own_parser(tmp_path, profile):
    """The flags are the commands' real ones for every profile, the GPU's too (which no test here runs)."""
    votes = tmp_path / "votes.csv"
    votes.touch()
    for split in SPLITS:            # the folders and checkpoints the commands read must exist for their parsers
        (tmp_path / "d" / split).mkdir(parents=True)
    (tmp_path / "o").mkdir()
    plan = plan_for(tmp_path, "--profile", profile, "--votes", str(votes))
    for s in plan.stages:
        for arg in s.cmd:
            if arg.endswith((".pth", ".onnx")) and "=" not in arg:
                open(arg, "a").close()
    for s in plan.stages:
        module = f"fer_common.commands.{s.cmd[3]}" if s.cmd[1] == "-m" else PARSERS[s.cmd[1]]
        rest = s.cmd[4:] if s.cmd[1] == "-m" else s.cmd[2:]
        importlib.import_module(module).get_args_parser().parse_args(rest)


def test_the_plan_follows_the_model_card(tmp_path):
    cpu = plan_for(tmp_path, "--profile", "cpu", "--votes", "v.csv")
    names = [s.name for s in cpu.stages]
    assert names[:9] == ["teacher_shipped_v1", "student_ba_s2", "student_g2_s3", "teacher_wide_s5", "ft_g2_broad_s8",
                         "soup_g2_broad", "calibrate", "export", "quantize"]
    gen1, gen2 = stage(cpu, "student_ba_s2").cmd, stage(cpu, "student_g2_s3").cmd
    assert flag(gen1, "--teacher")[0].endswith("teacher_shipped_v1.pth") and flag(gen1, "--distill_weight") == ["0.5"]
    assert flag(gen2, "--epochs") == ["70"] and flag(gen2, "--patience") == ["20"] and flag(gen2, "--seed") == ["3"]
    assert flag(stage(cpu, "teacher_shipped_v1").cmd, "--ema_decay") == ["0"]
    assert flag(stage(cpu, "teacher_wide_s5").cmd, "--widths") == ["64,128,256,512"]
    ft = stage(cpu, "ft_g2_broad_s8").cmd
    assert "--teacher_tta" in ft and flag(ft, "--augmentation") == ["broad"] and len(flag(ft, "--teacher")) == 2
    assert flag(ft, "--learning_rate") == ["0.0003"] and flag(ft, "--init_from")[0].endswith("student_g2_s3.pth")
    assert flag(stage(cpu, "soup_g2_broad").cmd, "--weights") == ["0.7"]        # nargs: 0.7 0.3
    assert stage(cpu, "soup_g2_broad").cmd[-4:-2] == ["0.7", "0.3"]
    assert flag(stage(cpu, "quantize").cmd, "--calibration")[0].endswith("val_new")
    fp = stage(cpu, "ferplus_model").cmd
    assert flag(fp, "--vote_mode") == ["crossentropy"] and flag(fp, "--init_from")[0].endswith("fer_model.pth")
    assert "robustness_ferplus" in names and names[-1] == "robustness_ferplus"
    assert all(flag(s.cmd, "--amp") == ["bf16"] for s in cpu.stages if s.last)

    gpu = plan_for(tmp_path, "--profile", "gpu")
    wide = [s for s in gpu.stages if s.name.startswith("teacher_wide")]
    assert [s.name for s in wide] == ["teacher_wide_broad_s5", "teacher_wide_broad_s6", "teacher_wide_broad_s7"]
    assert all(flag(s.cmd, "--augmentation") == ["broad"] for s in wide)
    assert len(flag(stage(gpu, "ft_g2_broad_s8").cmd, "--teacher")) == 4
    assert all(flag(s.cmd, "--device") == ["cuda"] for s in gpu.stages if s.cmd[1] != "-m")
    assert flag(stage(gpu, "student_g2_s3").cmd, "--batch_size") == ["256"]
    assert not any(s.name.startswith("ferplus") for s in gpu.stages)        # no --votes, no FER+ stage


def test_a_training_stage_is_done_when_it_exported_or_was_brought_back_finished(tmp_path):
    plan = plan_for(tmp_path, "--profile", "tiny")
    gen0 = stage(plan, "teacher_shipped_v1")
    model, onnx = gen0.outputs
    model.parent.mkdir(parents=True)
    model.touch()
    gen0.last.touch()                               # training: its best so far and its state
    assert not is_done(gen0) and model not in finished_models(plan)
    gen0.last.unlink()                              # no state and no history: stopped in its first epoch
    assert not is_done(gen0)
    (model.parent / "teacher_shipped_v1_metrics.json").touch()
    assert is_done(gen0)                            # a finished model brought back from another machine
    onnx.touch()
    gen0.last.touch()
    assert is_done(gen0) and model in finished_models(plan)


@pytest.mark.slow
def test_tiny_campaign_end_to_end_then_every_stage_is_skipped(tmp_path):
    data, out = campaign_data(tmp_path / "d"), tmp_path / "o"
    args = ["--profile", "tiny", "--dataset_path", data, "--out", out]
    r = run_script("recipes/campaign.py", *args, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    plan = plan_for(tmp_path, "--profile", "tiny")
    for s in plan.stages:
        assert all(p.is_file() for p in s.outputs), s.name
    for name in ("fer_model.pth", "fer_model.onnx", "fer_model.int8.onnx", "student_g2_s3.pth", "summary.json"):
        assert (out / name).is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and {v["status"] for v in summary["stages"].values()} == {"ran"}
    rows = {row["name"]: row for row in summary["candidates"]}
    assert 0 <= rows["fer_model.int8"]["accuracy"] <= 1 and rows["fer_model.int8"]["ship_rule"] in ("passes", "fails")
    assert rows["teacher_wide_s5"]["ship_rule"] is None                    # a teacher, not a candidate to ship
    log = (out / "campaign.log").read_text()
    assert log.count("  $ ") == len(plan.stages) and "fine_tuning.py" in log and " -m fer_common quantize " in log
    assert "ship rule vs shipped" in r.stdout

    again = run_script("recipes/campaign.py", *args, "--bring_back", tmp_path / "back", timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skip ") == len(plan.stages) and "$ " not in again.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert {v["status"] for v in summary["stages"].values()} == {"skipped"}
    chunks = sorted((tmp_path / "back").iterdir())
    assert [c.name for c in chunks] == ["bring_back.tar.00"]
    with tarfile.open(chunks[0]) as tar:
        names = tar.getnames()
    assert {"summary.json", "campaign.log", "fer_model.int8.onnx", "fer_model.pth", "eval/fer_model/metrics.json"} \
        <= set(names)


def test_first_failing_stage_stops_the_campaign_in_one_line(tmp_path):
    data = campaign_data(tmp_path / "d", per_class=(1, 1, 1))
    for image in (data / "train_new" / "Angry").iterdir():       # an empty class folder: training refuses it
        image.unlink()
    out = tmp_path / "o"
    r = run_script("recipes/campaign.py", "--profile", "tiny", "--dataset_path", data, "--out", out, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: stage teacher_shipped_v1 failed (exit 1)")
    assert (out / "campaign.log").read_text().count("  $ ") == 1
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert stages["teacher_shipped_v1"]["status"] == "failed" and stages["student_ba_s2"]["status"] == "not run"
    assert "Angry" in (out / "logs" / "teacher_shipped_v1.log").read_text()


def test_time_limit_stops_a_stage_to_continue_later(tmp_path):
    data, out = campaign_data(tmp_path / "d", per_class=(1, 1, 1)), tmp_path / "o"
    r = run_script("recipes/campaign.py", "--profile", "tiny", "--dataset_path", data, "--out", out,
                   "--time_limit", "0.5", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "time limit: stopped at stage teacher_shipped_v1" in r.stdout and "run the same command again" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["complete"] and summary["stages"]["teacher_shipped_v1"]["status"] == "stopped"


def test_pack_and_unpack_carry_the_data_set_in_parts(tmp_path, capsys):
    data = campaign_data(tmp_path / "d", per_class=(3, 1, 1))
    parts = pack(data, tmp_path / "pack", part_mib=0.01)
    assert len(parts) > 1 and parts[0].name == f"part-00-of-{len(parts):02d}.tar.gz"
    with pytest.raises(Exception, match="already holds part-"):
        pack(data, tmp_path / "pack", part_mib=0.01)
    parts[-1].rename(tmp_path / parts[-1].name)         # one part still on its way: nothing is extracted
    with pytest.raises(Exception, match="does not hold every part"):
        unpack(tmp_path / "pack", tmp_path / "there")
    assert not (tmp_path / "there" / "test").exists()
    (tmp_path / parts[-1].name).rename(parts[-1])
    unpack(tmp_path / "pack", tmp_path / "there")
    files = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "there") for p in (tmp_path / "there").rglob("*") if p.is_file())
    assert all((data / f).read_bytes() == (tmp_path / "there" / f).read_bytes() for f in files)
    unpack(tmp_path / "pack", tmp_path / "there")        # already there: kept
    assert "already holds" in capsys.readouterr().out


def test_bring_back_fits_the_device_tools_limits(tmp_path, monkeypatch):
    import recipes.transfer as transfer

    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    models = [out / f"m{i}.pth" for i in range(4)]
    for m in models:
        m.write_bytes(bytes(3000))
    monkeypatch.setattr(transfer, "BRING_BACK_BYTES", 7000)       # room for two models of 3000 bytes
    monkeypatch.setattr(transfer, "CHUNK_BYTES", 4096)
    (tmp_path / "back").mkdir()
    (tmp_path / "back" / "bring_back.tar.09").write_bytes(b"an earlier run's")
    chunks = bring_back(out, models, tmp_path / "back")
    assert [c.name for c in chunks] == [f"bring_back.tar.{i:02d}" for i in range(len(chunks))]
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == [c.name for c in chunks]
    assert all(c.stat().st_size <= 4096 for c in chunks)
    joined = tmp_path / "joined.tar"
    joined.write_bytes(b"".join(c.read_bytes() for c in chunks))
    with tarfile.open(joined) as tar:
        assert tar.getnames() == ["summary.json", "m0.pth", "m1.pth"]     # the first models while they fit
    assert subprocess.run(["tar", "-tf", joined], capture_output=True).returncode == 0
