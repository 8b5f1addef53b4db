"""`mmgen caption` and the unified model folder: one folder captions and samples; bad input is a
one-line error; the shipped config's vocabulary is the grammar's."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from mmgen.ar.model import VideoAR
from mmgen.cli import main as mmgen_main
from mmgen.data.unified import grammar_words
from mmgen.io import write_video
from mmgen.pipelines import VideoARPipeline
from mmgen.tokenizer.model import VideoTokenizer

ROOT = Path(__file__).resolve().parents[1]


def _pipeline(unified: bool, understand_input: str = "codes") -> VideoARPipeline:
    torch.manual_seed(0)
    tok = VideoTokenizer(base_channels=8, channel_mult=(1, 1, 1), temporal_downsample=(True, True), patch_size=1,
                         norm_groups=4, latent_dim=4, scales=(1, 2, 4), sample_size=16, num_frames=9)
    extra = dict(text_vocab=grammar_words(), text_len=12, mtp_heads=1, understand_input=understand_input) if unified else {}
    model = VideoAR(bits=4, scales=[(1, 1), (2, 2), (4, 4)], num_frames=2, width=32, depth=2, heads=2,
                    max_text_len=16, attn_backend="sdpa", **extra)
    return VideoARPipeline(tokenizer=tok.eval(), transformer=model.eval(), fps=8, sampling={"guidance": 2.0})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("unified")
    _pipeline(True).save_pretrained(root / "unified")
    _pipeline(True, "latent").save_pretrained(root / "unified_latent")
    _pipeline(False).save_pretrained(root / "plain")
    g = torch.Generator().manual_seed(0)
    write_video(root / "clip.mp4", torch.randint(0, 255, (5, 16, 16, 3), generator=g, dtype=torch.uint8))
    write_video(root / "short.mp4", torch.randint(0, 255, (3, 16, 16, 3), generator=g, dtype=torch.uint8))
    (root / "broken.mp4").write_bytes(b"not a video")
    return root


@pytest.mark.parametrize("name", ["unified", "unified_latent"])
def test_one_folder_captions_and_samples(folders, tmp_path, capsys, name):
    model = str(folders / name)
    assert mmgen_main(["caption", "--video", str(folders / "clip.mp4"), "--model", model, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["frames_read"] == 5 and isinstance(record["caption"], str)
    assert mmgen_main(["caption", "--video", str(folders / "clip.mp4"), "--model", model,
                       "--question", "What shape is the red object?"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    out = tmp_path / "videos"
    assert mmgen_main(["sample", "--model", model, "--prompt", "a big red circle moving left", "--num-frames", "5",
                       "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert len(list(out.glob("*.mp4"))) == 1


@pytest.mark.parametrize("args, message", [
    (["--video", "{root}/short.mp4"], "has 3 frame(s); this model reads the first 5"),
    (["--video", "{root}/broken.mp4"], "cannot read --video"),
    (["--video", "{root}/missing.mp4"], "cannot read --video"),
    (["--video", "{root}/clip.mp4", "--question", "is it purple?"], "'purple' not in this model's vocabulary"),
    (["--video", "{root}/clip.mp4", "--model", "{root}/plain"], "has no text head"),
])
def test_bad_input_is_one_line(folders, capsys, args, message):
    argv = [a.format(root=folders) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(folders / "unified")]
    assert mmgen_main(["caption", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmgen caption: error: ") and message in err and "\n" not in err


def test_sample_rejects_words_outside_the_vocabulary(folders, capsys):
    out = folders / "never"
    assert mmgen_main(["sample", "--model", str(folders / "unified"), "--prompt", "a purple circle",
                       "--out", str(out), "--no-progress"]) == 2
    assert "'purple' not in this model's vocabulary" in capsys.readouterr().err
    assert not list(out.glob("*.mp4"))


@pytest.mark.parametrize("config", ["unified.yaml", "unified_latent.yaml"])
def test_shipped_config_vocabulary_is_the_grammar(config):
    cfg = yaml.safe_load((ROOT / "configs/generator" / config).read_text())
    assert cfg["model"]["generator"]["text_vocab"] == grammar_words()
    shipped = ROOT / "mmgen/assets/unified/transformer/config.json"
    if shipped.is_file():
        assert json.loads(shipped.read_text())["text_vocab"] == grammar_words()


@pytest.mark.slow
def test_shipped_unified_model_captions_and_answers():
    """The shipped folder writes grammatical captions of held-out clips (seed 1000, never trained on)
    and answers a question with a word of the right kind (accuracy: bench/unified_bench.py)."""
    from mmgen.ar.caption import describe
    from mmgen.data.moving_shapes import MovingShapes, parse_caption

    pipe = VideoARPipeline.from_pretrained(str(ROOT / "mmgen/assets/unified"))
    clips = [MovingShapes(8, seed=1000, num_frames=9, max_objects=2).sample(i) for i in range(8)]
    for caption in describe(pipe, [s.frames for s in clips]):
        assert 1 <= len(parse_caption(caption)) <= 2  # raises on text outside the grammar
    answer = describe(pipe, [clips[0].frames], f"what size is the {clips[0].objects[0]['color']} object?")[0]
    assert answer in ("small", "large")
