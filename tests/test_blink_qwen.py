"""Blink on Hugging Face Qwen2-VL (mmgen.mllm.hf.Qwen2VLDecoder), on tiny random configs built here
(nothing downloaded): M-RoPE 3-D positions, flattened patch inputs, the same BlinkDecoder loop as LLaVA."""
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mmgen.mllm.blink import Blink, BlinkConfig, BlinkTrace  # noqa: E402
from mmgen.mllm.hf import Qwen2VLDecoder, vicrop  # noqa: E402
from test_blink_hf import (bench_script_scores_pope_files_and_trains_tokensr, expand_everyone,  # noqa: E402
                           tokensr_step_lowers_its_loss)  # shared with LLaVA's

IMAGE, START, END = 150, 152, 153  # image pad / vision start / vision end ids of the tiny config
GRID = (4, 4)  # merged token grid of a 32 x 32 image: 8 x 8 patches of 4 px, merged 2 x 2
PATCH_DIM = 3 * 2 * 4 * 4  # C * temporal patch * patch^2


def tiny_qwen2vl(attn: str = "sdpa", seed: int = 0):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Qwen2VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=160, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=1, eos_token_id=2),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=IMAGE, video_token_id=151, vision_start_token_id=START, vision_end_token_id=END,
        bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = attn
    cfg.text_config._attn_implementation = attn
    cfg.vision_config._attn_implementation = attn
    return Qwen2VLForConditionalGeneration(cfg).eval()


def prompts(B: int = 3):
    """[prefix 3 (vision start last) | 16 image pads | vision end + question of 4, 3, 2 tokens right-padded],
    attention mask, flattened patches [B * 64, 96]."""
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.tensor([[1, 5, START]]).repeat(B, 1), torch.full((B, 16), IMAGE),
                     torch.full((B, 1), END), torch.randint(10, 90, (B, 4), generator=g)], 1)
    mask = torch.ones_like(ids)
    for b in range(B):
        mask[b, ids.shape[1] - b:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask, torch.randn(B * 64, PATCH_DIM, generator=g)


def hf_kwargs(ids, pixels):
    B = ids.shape[0]
    return dict(input_ids=ids, pixel_values=pixels, image_grid_thw=torch.tensor([[1, 8, 8]] * B),
                mm_token_type_ids=(ids == IMAGE).int())


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen2vl()


def _last_logits(model, ids, mask, pixels):
    with torch.no_grad():
        out = model(**hf_kwargs(ids, pixels), attention_mask=mask).logits
    return out[torch.arange(len(ids)), mask.sum(1) - 1]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_blink_off_is_the_hf_forward(attn):
    model = tiny_qwen2vl(attn)
    dec = Qwen2VLDecoder(model, GRID)
    ids, mask, pixels = prompts()
    ref = _last_logits(model, ids, mask, pixels)
    with torch.no_grad():
        state = dec.prepare(ids, pixels, mask)
        plain = dec.run(state)
        off = dec.run(dec.prepare(ids, pixels, mask), Blink(BlinkConfig(layers=(1, 3), mode="interp",
                                                                        tau_exp=math.inf), None))
        hf_pos, _ = model.model.get_rope_index(ids, (ids == IMAGE).int(), torch.tensor([[1, 8, 8]] * 3), mask)
    assert torch.equal(state.pos[:, mask.bool()], hf_pos[:, mask.bool()])  # M-RoPE ids of every real token
    torch.testing.assert_close(plain, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(off, ref, atol=1e-5, rtol=0)


def test_blink_off_generates_what_hf_generates(qwen):
    dec = Qwen2VLDecoder(qwen, GRID)
    ids, _, pixels = prompts(1)
    ref = qwen.generate(**hf_kwargs(ids, pixels), max_new_tokens=6, do_sample=False, eos_token_id=None,
                        pad_token_id=0)[:, ids.shape[1]:]
    off = Blink(BlinkConfig(layers=(1, 3), mode="interp", tau_exp=math.inf), None)
    assert ref.shape == (1, 6)
    assert torch.equal(dec.generate(ids, pixels, 6, blink=off), ref)
    assert torch.equal(dec.generate(ids, pixels, 6), ref)


def test_appended_tokens_sit_at_their_cells(qwen):
    """SR tokens go between the visual block and the question, each at the 3-D position (P, P + r, P + c)
    of the cell (r, c) it subdivides; the question keeps its positions; dropping restores the sequence."""
    ids, mask, pixels = prompts()
    top = torch.tensor([0, 1, 3])  # tiles of the 2 x 2 tiling of the 4 x 4 grid
    dec = Qwen2VLDecoder(qwen, GRID)
    blink, state, grown = expand_everyone(dec, ids, mask, pixels, top)
    B, everyone = len(ids), torch.ones(len(ids), dtype=torch.bool)
    P, nv = 3, 16
    assert grown.n_extra == 16 and grown.h.shape[1] == ids.shape[1] + 16
    assert torch.equal(grown.h[:, :P + nv], state.h[:, :P + nv])
    assert torch.equal(grown.h[:, P + nv + 16:], state.h[:, P + nv:])
    r0, c0 = (top // 2) * 2, (top % 2) * 2
    for b in range(B):  # sub-cell (y, x) of the 4 x 4 SR grid belongs to cell (r0 + y // 2, c0 + x // 2)
        expect = [[P, P + int(r0[b]) + y // 2, P + int(c0[b]) + x // 2] for y in range(4) for x in range(4)]
        assert grown.pos[:, b, P + nv:P + nv + 16].T.tolist() == expect
    assert torch.equal(grown.pos[:, :, P + nv + 16:], state.pos[:, :, P + nv:])
    dropped = blink._edit(dec, 2, grown, ~everyone, ~everyone, top)
    assert torch.equal(dropped.h, state.h) and torch.equal(dropped.pos, state.pos)


def test_blink_expands_and_drops_per_sample(qwen):
    """Some samples expand, some drop later; split sub-batches equal the single-batch reference and each
    sample alone."""
    dec = Qwen2VLDecoder(qwen, GRID)
    ids, mask, pixels = prompts()
    probe = BlinkTrace()
    with torch.no_grad():
        dec.run(dec.prepare(ids, pixels, mask), Blink(BlinkConfig(layers=(1, 4), mode="interp", tau_exp=math.inf),
                                                      None), probe)
    rho = torch.stack(probe.rho).flatten().sort().values
    found = None
    for tau in ((rho[1:] + rho[:-1]) / 2).tolist():  # one threshold for both: expand above it, drop below it
        outs, traces = [], []
        for split in (False, True):
            trace = BlinkTrace()
            blink = Blink(BlinkConfig(layers=(1, 4), mode="interp", tau_exp=tau, tau_drop=tau, split_batches=split),
                          None)
            with torch.no_grad():
                outs.append(dec.run(dec.prepare(ids, pixels, mask), blink, trace))
            traces.append(torch.stack(trace.active))
        active = traces[1]
        if bool(active[0].any()) and not bool(active[0].all()) and bool((active[:-1] & ~active[1:]).any()):
            found = tau
            break
    assert found is not None, "no threshold where some samples expand and some drop later"
    assert torch.equal(traces[0], traces[1])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        alone = torch.cat([dec.run(dec.prepare(ids[b:b + 1, :int(mask[b].sum())], pixels[64 * b:64 * (b + 1)]),
                                   blink) for b in range(len(ids))])
    torch.testing.assert_close(outs[1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(outs[1], _last_logits(qwen, ids, mask, pixels), atol=1e-4)


def test_tokensr_training_step_lowers_its_loss(qwen):
    ids, mask, pixels = prompts()
    tokensr_step_lowers_its_loss(Qwen2VLDecoder(qwen, GRID), qwen, ids, mask, pixels, torch.tensor([0, 2, 3]))


def test_zoom_works_on_the_processors_patches(qwen):
    """The flattened patches unfold to the processor's normalised image and fold back exactly; the zoom of
    the whole grid is the image itself; ViCrop runs on them."""
    from transformers import Qwen2VLImageProcessor

    proc = Qwen2VLImageProcessor(patch_size=4, merge_size=2, temporal_patch_size=2, do_resize=False)
    img = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = proc(images=[im.numpy() for im in img], return_tensors="pt")["pixel_values"]
    dec = Qwen2VLDecoder(qwen, GRID)
    mean, std = torch.tensor(proc.image_mean)[:, None, None], torch.tensor(proc.image_std)[:, None, None]
    expect = (img.permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(dec._unpatchify(pixels), expect, atol=1e-5, rtol=1e-5)
    assert torch.equal(dec._patchify(dec._unpatchify(pixels)), pixels)
    zero = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(dec.zoom_pixels(pixels, zero, zero, 4), pixels, atol=1e-5, rtol=1e-5)
    ids, mask, _ = prompts(2)
    out = vicrop(dec, ids, pixels, layer=1, region=2, factor=2, attention_mask=mask)
    assert out.shape == (2, 160) and torch.isfinite(out).all()


def test_a_wrong_image_size_is_named(qwen):
    dec = Qwen2VLDecoder(qwen, GRID)
    ids, mask, pixels = prompts(1)
    with pytest.raises(ValueError, match="32x32 pixels"):
        dec.prepare(ids, pixels[:48], mask)


def tiny_qwen2vl_folder(path):
    """A loadable Qwen2-VL folder: the tiny model + a word-level tokenizer with Qwen2-VL's special tokens
    and the Qwen2-VL image / video processors built here."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    words = ["<pad>", "<s>", "</s>", "<unk>", *"user assistant what color is the circle ? red blue".split()]
    vocab = {w: i for i, w in enumerate(words + [f"w{i}" for i in range(IMAGE - len(words))])}
    special = {"<|image_pad|>": IMAGE, "<|video_pad|>": 151, "<|vision_start|>": START, "<|vision_end|>": END,
               "<|im_start|>": 154, "<|im_end|>": 155}
    vocab.update(special)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.add_tokens(list(special), special_tokens=True)
    patches = dict(patch_size=4, merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**patches), tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor(**patches))
    model = tiny_qwen2vl()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor


def test_vqa_command_answers_with_a_local_qwen2vl_folder(tmp_path, capsys):
    """`mmgen vqa --model` tells Qwen2-VL from LLaVA by the folder's config: plain greedy answers are the HF
    model's own (image resized to --image-side), --blink-interp and --blink (a TokenSR folder) answer too."""
    import numpy as np
    from PIL import Image

    from mmgen.mllm.cli import main
    from mmgen.mllm.hf import QWEN2VL_PROMPT
    from mmgen.mllm.tokensr import TokenSRBank

    folder = tmp_path / "qwen"
    model, processor = tiny_qwen2vl_folder(folder)
    rgb = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)  # square: the command pads others
    Image.fromarray(rgb).save(tmp_path / "scene.png")
    question = "what color is the circle ?"
    enc = processor(text=[QWEN2VL_PROMPT.format(question=question)],
                    images=[Image.fromarray(rgb).resize((32, 32), Image.BICUBIC)], return_tensors="pt",
                    size={"shortest_edge": 32 * 32, "longest_edge": 32 * 32})
    assert enc["image_grid_thw"].tolist() == [[1, 8, 8]]
    ref = model.generate(**enc, max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
    expect = processor.tokenizer.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    common = ["--model", str(folder), "--image", str(tmp_path / "scene.png"), "--question", question,
              "--max-new-tokens", "5", "--device", "cpu", "--image-side", "32"]
    assert main(common) == 0
    assert capsys.readouterr().out.strip() == expect
    TokenSRBank(layers=(1, 2), dim=64, hidden=8).save_pretrained(str(tmp_path / "sr"))
    blink = ["--blink-layers", "1", "3", "--region", "2", "--tau-exp", "0", "--tau-drop", "0"]
    for mode in (["--blink-interp"], ["--blink", "--tokensr", str(tmp_path / "sr")]):
        assert main([*common, *mode, *blink, "--show-saliency", str(tmp_path / "sal.png")]) == 0
        out = capsys.readouterr()
        assert out.out.strip() and (tmp_path / "sal.png").is_file()  # an answer (Blink may change it)
    assert main([*common, "--image-side", "36"]) == 2
    assert "multiple of" in capsys.readouterr().err


def test_vqa_command_names_an_unsupported_hf_family(tmp_path, capsys):
    from mmgen.mllm.cli import main

    (tmp_path / "blip").mkdir()
    (tmp_path / "blip" / "config.json").write_text('{"model_type": "blip-2"}')
    assert main(["--model", str(tmp_path / "blip"), "--image", "x.png", "--question", "what ?"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'blip-2'" in err and "'llava'" in err and "'qwen2_vl'" in err


@pytest.mark.slow
def test_qwen2vl_bench_script_scores_pope_files_and_trains_tokensr(tmp_path, capsys):
    folder = tmp_path / "qwen"
    tiny_qwen2vl_folder(folder)
    bench_script_scores_pope_files_and_trains_tokensr(folder, tmp_path, capsys, "--image-side", "32")
