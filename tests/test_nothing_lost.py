"""Issue 13, "nothing lost, nothing hangs": exports keep what they did not create, batch commands
finish the good items, expected errors are one line (exit 2), sampling settings are checked."""
import json
import os

import numpy as np
import pytest
import torch

from mmgen.cli import main as mmgen

TOK = dict(base_channels=8, channel_mult=[1, 1, 1], temporal_downsample=[True, True], patch_size=1, norm_groups=4,
           latent_dim=4, scales=[1, 2, 4], sample_size=16, num_frames=9)
GEN = dict(bits=4, scales=[[1, 1], [2, 2], [4, 4]], num_frames=3, width=32, depth=2, heads=2, cond="text",
           max_text_len=16, attn_backend="sdpa")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Checkpoints shaped like the ones `mmgen tokenizer fit` / `mmgen ar fit` write."""
    from mmgen.ar.model import VideoAR
    from mmgen.tokenizer.model import VideoTokenizer
    from mmgen.tokenizer.module import _plain_config

    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    tok, gen = VideoTokenizer(**TOK), VideoAR(**GEN)
    torch.nn.init.normal_(gen.out_proj.weight, std=0.5)
    tok_state = {f"tokenizer.{k}": v for k, v in tok.state_dict().items()}
    torch.save({"state_dict": tok_state, "tokenizer_config": _plain_config(tok.config)}, root / "tok.ckpt")
    torch.save({"state_dict": {**tok_state, **{f"model.{k}": v for k, v in gen.state_dict().items()}},
                "tokenizer_config": _plain_config(tok.config), "generator_config": dict(gen.config)}, root / "ar.ckpt")
    return root


def _tree(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# ----------------------------------------------------------------------------------- item 1
@pytest.mark.parametrize("group,ckpt", [("tokenizer", "tok.ckpt"), ("ar", "ar.ckpt")])
def test_export_keeps_a_users_files_and_refuses_dot(ckpts, tmp_path, monkeypatch, capsys, group, ckpt):
    src = tmp_path / "runs" / ckpt
    src.parent.mkdir()
    src.write_bytes((ckpts / ckpt).read_bytes())
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("mine too")
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    for dest, message in ((".", "current folder"), ("out", "not an mmgen model folder"), ("runs", "input"),
                          (str(src), "input"), ("notes.txt", "not a folder")):
        for extra in ([], ["--overwrite"]):
            assert mmgen([group, "export", str(src), dest, *extra]) == 2, (dest, extra)
            err = capsys.readouterr().err
            assert f"mmgen {group} export: error:" in err and message in err and len(err.strip().splitlines()) == 1
    assert _tree(tmp_path) == before  # every pre-existing file in place, nothing added

    assert mmgen([group, "export", str(src), "model"]) == 0
    assert mmgen([group, "export", str(src), "model"]) == 2 and "--overwrite" in capsys.readouterr().err
    (tmp_path / "model" / "keep.txt").write_text("a user's file inside the model folder")
    assert mmgen([group, "export", str(src), "model", "--overwrite"]) == 2
    os.remove(tmp_path / "model" / "keep.txt")
    assert mmgen([group, "export", str(src), "model", "--overwrite"]) == 0


# ----------------------------------------------------------------------------------- item 2
def test_ar_export_is_a_folder_mmgen_sample_loads(ckpts, tmp_path):
    from mmgen.pipelines import VideoARPipeline

    (tmp_path / "s.yaml").write_text("guidance: 2.0\nbatch_size: 4\n")
    assert mmgen(["ar", "export", str(ckpts / "ar.ckpt"), str(tmp_path / "m"), "--sampling",
                  str(tmp_path / "s.yaml"), "--fps", "6"]) == 0
    assert VideoARPipeline.from_pretrained(tmp_path / "m").config.fps == 6
    assert mmgen(["sample", "--model", str(tmp_path / "m"), "--prompt", "red", "--num-frames", "5", "--out",
                  str(tmp_path / "o"), "--no-progress", "--device", "cpu"]) == 0
    meta = json.loads((tmp_path / "o" / "0000_red_s0.json").read_text())
    assert meta["fps"] == 6 and meta["settings"]["guidance"]["scale"] == 2.0


# ----------------------------------------------------------------------------------- item 3
@pytest.fixture(scope="module")
def tok_dir(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("t") / "tok"
    assert mmgen(["tokenizer", "export", str(ckpts / "tok.ckpt"), str(out)]) == 0
    return out


def test_reconstruct_finishes_the_good_videos_and_names_the_bad(tok_dir, tmp_path, capsys):
    from mmgen.io import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "c"):
        write_video(videos / f"{name}.mp4", rng.integers(0, 255, (9, 16, 16, 3), dtype=np.uint8))
    (videos / "b.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "recon"
    assert mmgen(["tokenizer", "reconstruct", "--model", str(tok_dir), "--input", str(videos), "--out", str(out),
                  "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "skipped b.mp4:" in err and "2 video(s) done, 1 skipped" in err
    assert sorted(p.name for p in out.glob("*.mp4")) == ["a_recon.mp4", "c_recon.mp4"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["videos"] == 2 and metrics["skipped"][0]["video"] == "b.mp4"
    # --strict: the same run fails; it may replace its own earlier outputs, never a user's file
    assert mmgen(["tokenizer", "reconstruct", "--model", str(tok_dir), "--input", str(videos), "--out", str(out),
                  "--device", "cpu", "--strict"]) == 1
    (out / "metrics.json").unlink()
    (out / "a_recon.mp4").write_text("mine now")  # no longer listed by a metrics.json: not ours
    assert mmgen(["tokenizer", "reconstruct", "--model", str(tok_dir), "--input", str(videos), "--out", str(out),
                  "--device", "cpu"]) == 2
    assert (out / "a_recon.mp4").read_text() == "mine now"
    # nothing readable: non-zero
    (videos / "a.mp4").write_bytes(b"x")
    (videos / "c.mp4").write_bytes(b"")
    assert mmgen(["tokenizer", "reconstruct", "--model", str(tok_dir), "--input", str(videos), "--out",
                  str(tmp_path / "r2"), "--device", "cpu"]) == 1
    assert "0 video(s) done, 3 skipped" in capsys.readouterr().err


def test_run_batch_counts_and_exit_codes(capsys):
    from mmgen.cli_utils import run_batch

    def work(x):
        if x % 2:
            raise ValueError(f"odd {x}")
        return x * 10

    result = run_batch(range(4), work, command="demo", label=lambda x: f"item{x}")
    assert result.done == [0, 20] and result.skipped == [("item1", "odd 1"), ("item3", "odd 3")]
    err = capsys.readouterr().err.splitlines()
    assert err == ["mmgen demo: skipped item1: odd 1", "mmgen demo: skipped item3: odd 3",
                   "mmgen demo: 2 item(s) done, 2 skipped"]
    assert result.exit_code() == 0 and result.exit_code(strict=True) == 1
    assert run_batch([1], work, command="demo").exit_code() == 1


def test_data_inspect_names_each_bad_file_and_strict(tmp_path, capsys):
    from mmgen.io import write_video

    write_video(tmp_path / "good.mp4", np.zeros((3, 8, 8, 3), np.uint8))
    (tmp_path / "bad.mp4").write_bytes(b"garbage")
    assert mmgen(["data", "inspect", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert "skipped bad.mp4:" in captured.err and "1 video(s) done, 1 skipped" in captured.err
    assert json.loads(captured.out)["unreadable_files"][0]["file"] == "bad.mp4"
    assert mmgen(["data", "inspect", str(tmp_path), "--json", "--strict"]) == 1


# ----------------------------------------------------------------------------------- item 4
def test_expected_errors_are_one_line_and_debug_shows_the_traceback(ckpts, tmp_path, capsys):
    (tmp_path / "random.ckpt").write_bytes(os.urandom(256))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    cases = [
        (["tokenizer", "export", str(tmp_path / "missing.ckpt"), str(tmp_path / "o")], "not found"),
        (["tokenizer", "export", str(tmp_path / "random.ckpt"), str(tmp_path / "o")], "not a readable checkpoint"),
        (["ar", "export", str(tmp_path / "empty.ckpt"), str(tmp_path / "o")], "is empty"),
        (["ar", "export", str(ckpts / "tok.ckpt"), str(tmp_path / "o")], "not a checkpoint of `mmgen ar fit`"),
        (["tokenizer", "export", str(ckpts / "tok.ckpt"), str(blocker / "sub")], "file exists"),
        (["tokenizer", "reconstruct", "--model", str(tmp_path), "--input", str(tmp_path / "none"), "--out",
          str(tmp_path / "r")], "not found"),
        (["tokenizer", "reconstruct", "--model", str(tmp_path), "--input", str(tmp_path), "--out",
          str(tmp_path / "r")], "no video files"),
        (["data", "inspect", str(tmp_path / "none")], "folder not found"),
        (["data", "synth", "--out", str(blocker), "--num", "1"], "not a folder"),
        (["ar", "tokenize", "--tokenizer", str(tmp_path), "--out", str(tmp_path / "c"), "--dataset-args", "{"],
         "not valid JSON"),
        (["ar", "tokenize", "--tokenizer", str(tmp_path), "--out", str(tmp_path), "--dataset-args", "{}"],
         "not a latent cache"),
        (["sample", "--prompt", "x", "--guidance", "nan", "--out", str(tmp_path / "s")], "finite number"),
    ]
    for argv, message in cases:
        assert mmgen(argv) == 2, argv
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mmgen {' '.join(argv[:2]) if argv[0] != 'sample' else 'sample'}: error:"), err
        assert message in err, (argv, err)
        assert "Traceback" not in err and "weights_only=False" not in err
    with pytest.raises(Exception, match="readable checkpoint"):  # --debug: the real exception
        mmgen(["tokenizer", "export", str(tmp_path / "random.ckpt"), str(tmp_path / "o"), "--debug"])


def test_corrupt_weight_file_in_a_model_folder_is_one_line(ckpts, tmp_path, capsys):
    assert mmgen(["ar", "export", str(ckpts / "ar.ckpt"), str(tmp_path / "m")]) == 0
    (tmp_path / "m" / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(64))
    assert mmgen(["sample", "--model", str(tmp_path / "m"), "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmgen sample: error: cannot load the model") and len(err.strip().splitlines()) == 1


def test_writing_into_an_unwritable_folder_is_one_line(ckpts, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert mmgen(["tokenizer", "export", str(ckpts / "tok.ckpt"), str(locked / "m")]) == 2
    assert "permission denied" in capsys.readouterr().err
