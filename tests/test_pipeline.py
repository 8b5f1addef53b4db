"""VideoARPipeline: diffusers-style save/load, outputs, streaming, extension."""
import json

import numpy as np
import pytest
import torch

from mmgen.ar.model import VideoAR
from mmgen.pipelines import VideoARPipeline, to_uint8_videos
from mmgen.tokenizer.model import VideoTokenizer


def tiny_pipeline(cond="text", frame_window=None, sampling=None):
    torch.manual_seed(0)
    tok = VideoTokenizer(base_channels=8, channel_mult=(1, 1, 1), temporal_downsample=(True, True), patch_size=1,
                         norm_groups=4, latent_dim=4, scales=(1, 2, 4), sample_size=16, num_frames=9)
    model = VideoAR(bits=4, scales=[(1, 1), (2, 2), (4, 4)], num_frames=3, width=32, depth=2, heads=2,
                    cond=cond, num_classes=4, max_text_len=16, frame_window=frame_window, attn_backend="sdpa")
    torch.nn.init.normal_(model.out_proj.weight, std=0.5)
    return VideoARPipeline(tokenizer=tok.eval(), transformer=model.eval(), fps=8, sampling=sampling)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(sampling={"guidance": 2.0})


def test_outputs_and_types(pipe):
    out = pipe(prompt=["a red", "b"], num_frames=9, seed=0, progress=False)
    assert out.frames.shape == (2, 9, 16, 16, 3) and out.frames.dtype == np.float32
    assert 0.0 <= out.frames.min() and out.frames.max() <= 1.0
    pt = pipe(prompt=["a red"], num_frames=9, seed=0, output_type="pt", progress=False).frames
    assert pt.shape == (1, 9, 3, 16, 16)
    assert torch.allclose(pt[0].permute(0, 2, 3, 1), torch.from_numpy(out.frames[0]))
    pil = pipe(prompt="a red", num_frames=9, seed=0, output_type="pil", progress=False).frames
    assert len(pil) == 1 and len(pil[0]) == 9 and pil[0][0].size == (16, 16)
    latent = pipe(prompt="a red", num_frames=9, seed=0, output_type="latent", progress=False).frames
    assert [tuple(c.shape) for c in latent] == [(1, 3, 1, 1, 4), (1, 3, 2, 2, 4), (1, 3, 4, 4, 4)]
    decoded = pipe.decode_codes(latent)
    assert decoded.dtype == torch.uint8 and decoded.shape == (1, 9, 16, 16, 3)
    assert (decoded.int() - torch.from_numpy(out.frames[:1] * 255).round().int()).abs().max() <= 1
    assert to_uint8_videos(out.frames)[0].dtype == np.uint8


def test_seed_reproducible_and_batch_independent(pipe):
    a = pipe(prompt=["x", "y"], num_frames=5, seed=[3, 4], progress=False).frames
    b = pipe(prompt=["y"], num_frames=5, seed=[4], progress=False).frames
    assert np.array_equal(a[1:], b)
    c = pipe(prompt=["y"], num_frames=5, seed=[5], progress=False).frames
    assert not np.array_equal(b, c)


def test_cached_and_recomputed_pipeline_agree(pipe):
    a = pipe(prompt=["q"], num_frames=9, seed=1, guidance="adaptive", progress=False).frames
    b = pipe(prompt=["q"], num_frames=9, seed=1, guidance="adaptive", use_cache=False, progress=False).frames
    assert np.array_equal(a, b)


def test_save_and_load_whole_folder(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["sampling"]["guidance"]["scale"] == 2.0 and index["fps"] == 8
    assert list((tmp_path / "p" / "transformer").glob("*.safetensors"))
    loaded = VideoARPipeline.from_pretrained(tmp_path / "p")
    assert loaded.config.sampling == pipe.config.sampling
    a = pipe(prompt="z", num_frames=5, seed=2, progress=False).frames
    b = loaded(prompt="z", num_frames=5, seed=2, progress=False).frames
    assert np.array_equal(a, b)


def test_streaming_gives_the_same_frames(pipe):
    chunks = []
    out = pipe(prompt=["s"], num_frames=9, seed=0, progress=False, callback_on_frames=chunks.append).frames
    assert [c.shape[1] for c in chunks] == [1, 4, 4]
    ref = pipe(prompt=["s"], num_frames=9, seed=0, progress=False).frames
    assert np.array_equal(to_uint8_videos(out)[0], to_uint8_videos(ref)[0])
    assert np.array_equal(np.concatenate(chunks, axis=1)[0], to_uint8_videos(ref)[0])


def test_windowed_stream_runs_past_training_length():
    pipe = tiny_pipeline(frame_window=1)
    seen = []
    n = pipe.stream(seen.append, prompt=["w"], num_frames=25, seed=0, progress=False)
    assert n == 25 and sum(c.shape[1] for c in seen) == 25


def test_bad_input(pipe):
    with pytest.raises(ValueError, match="outside the text vocabulary"):
        pipe(prompt=["caf\u00e9"], num_frames=5, progress=False)
    with pytest.raises(ValueError, match="at most 16"):
        pipe(prompt=["x" * 17], num_frames=5, progress=False)
    with pytest.raises(ValueError, match="class-conditional|text-conditional"):
        pipe(class_labels=[1], num_frames=5, progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        pipe(num_frames=5, progress=False)
    with pytest.raises(ValueError, match="output_type"):
        pipe(prompt="x", output_type="gif", progress=False)
    with pytest.raises(ValueError, match="unknown guidance"):
        pipe(prompt="x", guidance="cosine", progress=False)
    with pytest.warns(UserWarning, match="generating 9 frames"):
        out = pipe(prompt="x", num_frames=7, seed=0, progress=False)
    assert out.frames.shape[1] == 9


def test_class_pipeline_and_range_check():
    pipe = tiny_pipeline(cond="class")
    out = pipe(class_labels=[0, 3], num_frames=5, seed=0, progress=False)
    assert out.frames.shape[:2] == (2, 5)
    with pytest.raises(ValueError, match="out of range"):
        pipe(class_labels=[4], num_frames=5, progress=False)


def test_extend_keeps_input_and_chains(pipe):
    clip = (torch.rand(5, 16, 16, 3) * 255).to(torch.uint8)
    out = pipe.extend(clip, num_new_frames=10, prompt="go", seed=0, progress=False)
    assert out.shape == (15, 16, 16, 3) and out.dtype == torch.uint8
    assert torch.equal(out[:5], clip)
    image = clip[:1]
    i2v = pipe.extend(image, num_new_frames=8, seed=0, progress=False)  # unconditional image-to-video
    assert i2v.shape[0] == 9 and torch.equal(i2v[:1], image)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        pipe.extend(clip, num_new_frames=4, context_frames=3, progress=False)


def test_assemble_writes_a_loadable_folder(pipe, tmp_path):
    from mmgen.pipelines.assemble import main as assemble_main

    pipe.tokenizer.save_pretrained(tmp_path / "tok")
    pipe.transformer.save_pretrained(tmp_path / "gen")
    (tmp_path / "s.yaml").write_text("guidance: {kind: linear, start: 4.0, end: 2.0}\nbatch_size: 4\n")
    rc = assemble_main(["--tokenizer", str(tmp_path / "tok"), "--generator", str(tmp_path / "gen"),
                        "--sampling", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "pipe")])
    assert rc == 0
    loaded = VideoARPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.config.sampling["guidance"]["kind"] == "linear"
    a = loaded(prompt="k", num_frames=5, seed=0, progress=False).frames
    b = pipe(prompt="k", num_frames=5, seed=0, guidance="linear:4:2", progress=False).frames
    assert np.array_equal(a, b)
    assert assemble_main(["--tokenizer", str(tmp_path / "nope"), "--generator", str(tmp_path / "gen"),
                          "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_default_model_slice():
    from mmgen.data.moving_shapes import parse_caption
    from mmgen.data.default_model import DEFAULT_PROMPTS, DefaultModelShapes

    assert len(DEFAULT_PROMPTS) == 32 and len(set(DEFAULT_PROMPTS)) == 32
    ds = DefaultModelShapes(6, seed=1)
    for i in range(len(ds)):
        item = ds[i]
        assert item["caption"] in DEFAULT_PROMPTS
        assert item["video"].shape == (3, 17, 64, 64)
        (obj,) = parse_caption(item["caption"])
        assert obj.size == "large" and obj.motion in ("left", "right", "up", "down")


def test_frames_decoded_as_they_complete_match_one_decode_of_all_codes(pipe):
    """The pipeline decodes each latent frame as soon as it is sampled (flat memory); the frames
    equal a one-pass decode of the whole latent within one uint8 level (float rounding)."""
    from mmgen.pipelines.videoar import _video_to_uint8

    frames = pipe(prompt=["a red"], num_frames=9, seed=3, progress=False, output_type="pt").frames
    codes = pipe(prompt=["a red"], num_frames=9, seed=3, progress=False, output_type="latent").frames
    with torch.no_grad():
        latent = pipe.tokenizer.codes_to_latent(codes)
        whole = _video_to_uint8(pipe.tokenizer.decode(latent, chunk_frames=None))
    streamed = (frames * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
    assert streamed.shape == whole.shape
    assert (streamed.int() - whole.int()).abs().max() <= 1
