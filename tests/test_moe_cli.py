"""`mmgen sample --elastic` and `mmgen ar routing` on a tiny MoE pipeline."""
import pytest
import torch

from mmgen.ar import VideoAR
from mmgen.ar.cli import main as ar_main
from mmgen.cli import main as mmgen_main
from mmgen.pipelines.videoar import VideoARPipeline
from mmgen.tokenizer.model import VideoTokenizer


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    torch.manual_seed(0)
    tok = VideoTokenizer(base_channels=8, channel_mult=(1, 1, 1), temporal_downsample=(True, True), patch_size=1,
                         norm_groups=4, latent_dim=4, scales=(1, 2, 4), sample_size=16, num_frames=9)
    model = VideoAR(bits=4, scales=[(1, 1), (2, 2), (4, 4)], num_frames=3, width=32, depth=2, heads=2,
                    max_text_len=16, attn_backend="sdpa", ffn="moe", moe_experts=4, moe_top_k=2,
                    elastic=dict(depths=[1], top_ks=[1]))
    torch.nn.init.normal_(model.out_proj.weight, std=0.5)
    path = tmp_path_factory.mktemp("models") / "moe"
    VideoARPipeline(tokenizer=tok.eval(), transformer=model.eval(), fps=8).save_pretrained(path)
    return str(path)


def _sample(model_dir, out, *extra):
    return mmgen_main(["sample", "--model", model_dir, "--prompt", "a red one", "--num-frames", "9",
                       "--out", str(out), "--no-progress", "--device", "cpu", *extra])


def test_sample_rejects_an_elastic_setting_the_model_was_not_trained_with(moe_dir, tmp_path, capsys):
    assert _sample(moe_dir, tmp_path / "bad", "--elastic", "top_k=3") == 2
    err = capsys.readouterr().err
    assert "mmgen sample: error: elastic top_k=3 was not trained" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.mp4"))
    assert _sample(moe_dir, tmp_path / "bad2", "--elastic", "width=2") == 2
    assert "KEY=INT" in capsys.readouterr().err


@pytest.mark.slow
def test_sample_runs_a_trained_elastic_submodel(moe_dir, tmp_path):
    assert _sample(moe_dir, tmp_path / "full") == 0
    assert _sample(moe_dir, tmp_path / "sub", "--elastic", "depth=1,top_k=1") == 0
    full, sub = (next((tmp_path / d).glob("*.mp4")).read_bytes() for d in ("full", "sub"))
    assert full != sub  # a different (smaller) network made the second video


def test_routing_draws_each_modality_and_refuses_dense_models(moe_dir, tmp_path, capsys):
    from mmgen.ar.routing import GENERATE, collect_routing

    pipe = VideoARPipeline.from_pretrained(moe_dir)
    counts = collect_routing(pipe.transformer, pipe.tokenizer, num_clips=2)
    assert list(counts) == [GENERATE] and set(counts[GENERATE]) == {"text", "scale0", "scale1", "scale2"}
    g = counts[GENERATE]
    assert g["text"].sum() == 2 * 2 * 16 * 2  # layers x clips x prompt bytes (captions are longer) x top_k
    assert g["scale2"].sum() == 2 * 2 * 3 * 16 * 2  # layers x clips x frames x 4x4 tokens x top_k
    out = tmp_path / "routing.png"
    assert ar_main(["routing", "--model", moe_dir, "--out", str(out), "--clips", "2"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "text/visual expert-use overlap by layer" in capsys.readouterr().out
    dense = tmp_path / "dense"
    VideoARPipeline(tokenizer=pipe.tokenizer, transformer=VideoAR(bits=4, scales=[(1, 1), (2, 2), (4, 4)],
                    num_frames=3, width=32, depth=1, heads=2, max_text_len=16), fps=8).save_pretrained(dense)
    capsys.readouterr()
    assert ar_main(["routing", "--model", str(dense), "--out", str(tmp_path / "d.png")]) == 2
    assert "ffn='dense'" in capsys.readouterr().err and not (tmp_path / "d.png").exists()


def test_routing_of_a_unified_model_counts_both_directions_without_padding(moe_dir):
    from mmgen.ar.routing import CAPTION, GENERATE, collect_routing, text_visual_overlap
    from mmgen.ar.unified import text_sequences
    from mmgen.ar.words import WordVocab
    from mmgen.data import MovingShapes
    from mmgen.data.unified import grammar_words

    tok = VideoARPipeline.from_pretrained(moe_dir).tokenizer
    torch.manual_seed(0)
    model = VideoAR(bits=4, scales=[(1, 1), (2, 2), (4, 4)], num_frames=2, width=32, depth=2, heads=2,
                    max_text_len=24, attn_backend="sdpa", ffn="moe", moe_experts=4, moe_top_k=2,
                    text_vocab=grammar_words(), text_len=20).eval()
    counts = collect_routing(model, tok, num_clips=3, batch_size=2)
    assert list(counts) == [GENERATE, CAPTION]
    for direction in counts.values():
        assert set(direction) == {"text", "scale0", "scale1", "scale2"}
        assert (direction["scale2"].sum(1) == 3 * 2 * 16 * 2).all()  # clips x 2 latent frames (not the tokenizer's 3) x 4x4 x top_k
    words = WordVocab(grammar_words())
    captions = [it["caption"] for it in MovingShapes(num_samples=3, size=16, num_frames=9, seed=1)]
    prompt_words = int((words.encode_batch(captions, 24) != words.PAD_ID).sum())
    caption_words = int((text_sequences(words, [""] * 3, captions, 20)[0] != words.PAD_ID).sum())
    assert caption_words == prompt_words + 2 * 3  # <caption> ... <eos> around the same words
    assert (counts[GENERATE]["text"].sum(1) == prompt_words * 2).all()  # padding is not text
    assert (counts[CAPTION]["text"].sum(1) == caption_words * 2).all()
    shared = text_visual_overlap(counts)
    assert set(shared) == {GENERATE, CAPTION} and all(0 <= v <= 1 for vs in shared.values() for v in vs)
