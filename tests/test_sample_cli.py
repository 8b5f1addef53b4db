"""`mmgen sample` / `mmgen extend`: files, sidecars, and bad input that writes nothing."""
import json
import os

import numpy as np
import pytest
import torch

from mmgen.cli import main as mmgen_main
from mmgen.io import read_video, write_video
from mmgen.pipelines import cli
from mmgen.pipelines.outputs import round_num_frames, slug

SIDECAR_KEYS = {"prompt", "class_id", "seed", "model", "num_frames", "fps", "settings"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from test_pipeline import tiny_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny"
    tiny_pipeline(sampling={"guidance": 2.0}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def class_model_dir(tmp_path_factory):
    from test_pipeline import tiny_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny_class"
    tiny_pipeline(cond="class").save_pretrained(path)
    return str(path)


def run_sample(*args):
    return mmgen_main(["sample", *args, "--no-progress", "--device", "cpu"])


def test_sample_writes_videos_and_sidecars(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run_sample("--model", model_dir, "--prompt", "a red one", "--prompt", "b", "--num-frames", "7",
                    "--out", str(out), "--seed", "5", "--gif", "--grid", "--guidance", "linear:4:2")
    assert rc == 0
    assert "generating 9 frames" in capsys.readouterr().err
    sidecars = sorted(out.glob("*.json"))
    assert len(sidecars) == 2
    meta = json.loads(sidecars[0].read_text())
    assert set(meta) == SIDECAR_KEYS
    assert meta["prompt"] == "a red one" and meta["class_id"] is None and meta["seed"] == 5
    assert meta["num_frames"] == 9 and meta["fps"] == 8 and meta["model"] == model_dir
    assert meta["settings"]["guidance"]["kind"] == "linear" and meta["settings"]["guidance"]["start"] == 4.0
    assert json.loads(sidecars[1].read_text())["seed"] == 6
    video = read_video(sidecars[0].with_suffix(".mp4"))
    assert tuple(video.shape) == (9, 16, 16, 3)
    assert sidecars[0].with_suffix(".gif").is_file() and (out / "grid.mp4").is_file()
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temp files left behind


def test_same_seed_reproduces_a_video_from_its_sidecar(model_dir, tmp_path):
    run_sample("--model", model_dir, "--prompt", "x", "--prompt", "y", "--out", str(tmp_path / "a"),
               "--num-frames", "5", "--seed", "10")
    meta = json.loads(next((tmp_path / "a").glob("0001_*.json")).read_text())
    run_sample("--model", model_dir, "--prompt", meta["prompt"], "--out", str(tmp_path / "b"),
               "--num-frames", "5", "--seed", str(meta["seed"]))
    a = read_video(next((tmp_path / "a").glob("0001_*.mp4")))
    b = read_video(next((tmp_path / "b").glob("*.mp4")))
    assert torch.equal(a, b)


def test_class_ids_and_prompts_file(class_model_dir, model_dir, tmp_path):
    assert run_sample("--model", class_model_dir, "--class-id", "3", "--out", str(tmp_path / "c"),
                      "--num-frames", "5") == 0
    meta = json.loads(next((tmp_path / "c").glob("*.json")).read_text())
    assert meta["class_id"] == 3 and meta["prompt"] is None
    prompts = tmp_path / "p.txt"
    prompts.write_text("# comment\nfirst prompt\n\nsecond\n")
    assert run_sample("--model", model_dir, "--prompts-file", str(prompts), "--out", str(tmp_path / "d"),
                      "--num-frames", "5", "--batch-size", "1") == 0
    assert len(list((tmp_path / "d").glob("*.mp4"))) == 2


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model", "--prompt", "x"], "does not exist"),
    (["--prompt", "caf\u00e9"], "outside the text vocabulary"),
    (["--prompt", "x" * 40], "at most 16"),
    (["--class-id", "1"], "text-conditional"),
    (["--prompt", "x", "--guidance", "cosine"], "unknown guidance"),
    (["--prompt", "x", "--num-per-prompt", "0"], "num-per-prompt"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(model_dir, tmp_path, capsys, args, message):
    if "--model" not in args:
        args = ["--model", model_dir, *args]
    out = tmp_path / "out"
    assert run_sample(*args, "--out", str(out)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_folder_without_model_index_and_missing_default(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert run_sample("--model", str(tmp_path / "empty"), "--prompt", "x", "--out", str(tmp_path / "o")) == 2
    assert "model_index.json is missing" in capsys.readouterr().err
    monkeypatch.setattr(cli, "DEFAULT_MODEL", tmp_path / "nowhere")
    assert run_sample("--prompt", "x", "--out", str(tmp_path / "o")) == 2
    assert "build_default_model.sh" in capsys.readouterr().err


def test_unwritable_output(model_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert run_sample("--model", model_dir, "--prompt", "x", "--out", str(blocker)) == 2
    assert "not a folder" in capsys.readouterr().err
    assert run_sample("--model", model_dir, "--prompt", "x", "--out", str(blocker / "sub")) == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_extend_video_and_image(model_dir, tmp_path):
    clip = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    write_video(tmp_path / "in.mp4", clip, fps=8)
    out = tmp_path / "long.mp4"
    rc = mmgen_main(["extend", "--model", model_dir, "--video", str(tmp_path / "in.mp4"), "--seconds", "1.5",
                     "--out", str(out), "--prompt", "go", "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert read_video(out).shape[0] == 5 + 12
    meta = json.loads(out.with_suffix(".json").read_text())
    assert set(meta) == SIDECAR_KEYS and meta["settings"]["new_frames"] == 12
    from PIL import Image

    Image.fromarray(clip[0]).save(tmp_path / "still.png")
    rc = mmgen_main(["extend", "--model", model_dir, "--video", str(tmp_path / "still.png"), "--seconds", "1",
                     "--out", str(tmp_path / "i2v.gif"), "--no-progress", "--device", "cpu"])
    assert rc == 0 and read_video(tmp_path / "i2v.gif").shape[0] == 9


def test_extend_bad_input(model_dir, tmp_path, capsys):
    base = ["extend", "--model", model_dir, "--no-progress", "--device", "cpu"]
    assert mmgen_main([*base, "--video", str(tmp_path / "missing.mp4"), "--seconds", "1",
                       "--out", str(tmp_path / "o.mp4")]) == 2
    assert "not found" in capsys.readouterr().err
    assert mmgen_main([*base, "--video", "x.mp4", "--seconds", "1", "--out", str(tmp_path / "o.avi")]) == 2
    assert "extension" in capsys.readouterr().err
    assert mmgen_main([*base, "--video", "x.mp4", "--seconds", "0", "--out", str(tmp_path / "o.mp4")]) == 2


def test_helpers():
    assert round_num_frames(17, 4) == (17, False)
    assert round_num_frames(18, 4) == (21, True)
    assert round_num_frames(1, 4) == (1, False)
    assert slug("A large Red circle, moving right!") == "a-large-red-circle-moving-right"
    with pytest.raises(SystemExit):
        mmgen_main(["sample", "--help"])


def test_stream_writes_frames_as_decoded(model_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "s"
    assert run_sample("--model", model_dir, "--prompt", "x", "--prompt", "y", "--num-frames", "9",
                      "--out", str(out), "--stream") == 0
    for mp4 in out.glob("*.mp4"):
        frames = sorted((out / (mp4.stem + "_frames")).glob("*.png"))
        assert len(frames) == 9
        assert np.asarray(Image.open(frames[0])).shape == (16, 16, 3)
