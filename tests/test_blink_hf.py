"""Blink on Hugging Face LLaVA (mmgen.mllm.hf), on tiny random configs built here (nothing downloaded)."""
import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mmgen.mllm.blink import Blink, BlinkConfig, BlinkTrace  # noqa: E402
from mmgen.mllm.hf import LlavaDecoder, tokensr_loss, vicrop  # noqa: E402
from mmgen.mllm.tokensr import TokenSRBank  # noqa: E402

IMAGE = 127  # the image placeholder id of the tiny config (the last of its 128 words)


def tiny_llava(attn: str = "sdpa", seed: int = 0):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=4, projection_dim=32)  # an 8 x 8 grid
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, max_position_embeddings=256)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, vision_feature_layer=-2,
                      vision_feature_select_strategy="default")
    cfg._attn_implementation = attn
    cfg.text_config._attn_implementation = attn
    cfg.vision_config._attn_implementation = attn
    return LlavaForConditionalGeneration(cfg).eval()


def prompts(B: int = 3):
    """[prefix 3 | 64 image placeholders | question of 4, 3, 2 tokens right-padded], attention mask, pixels."""
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.tensor([[1, 5, 6]]).repeat(B, 1), torch.full((B, 64), IMAGE),
                     torch.randint(10, 90, (B, 4), generator=g)], 1)
    mask = torch.ones_like(ids)
    for b in range(B):
        mask[b, ids.shape[1] - b:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask, torch.randn(B, 3, 32, 32, generator=g)


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


def _last_logits(model, ids, mask, pixels):
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    return out[torch.arange(len(ids)), mask.sum(1) - 1]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_blink_off_is_the_hf_forward(attn):
    model = tiny_llava(attn)
    dec = LlavaDecoder(model)
    ids, mask, pixels = prompts()
    ref = _last_logits(model, ids, mask, pixels)
    with torch.no_grad():
        plain = dec.run(dec.prepare(ids, pixels, mask))
        off = dec.run(dec.prepare(ids, pixels, mask), Blink(BlinkConfig(layers=(1, 3), mode="interp",
                                                                        tau_exp=math.inf), None))
    torch.testing.assert_close(plain, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(off, ref, atol=1e-5, rtol=0)


def test_blink_off_generates_what_hf_generates(llava):
    dec = LlavaDecoder(llava)
    ids, _, pixels = prompts(1)
    ref = llava.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False)[:, ids.shape[1]:]
    off = Blink(BlinkConfig(layers=(1, 3), mode="interp", tau_exp=math.inf), None)
    assert torch.equal(dec.generate(ids, pixels, 6, blink=off), ref)
    assert torch.equal(dec.generate(ids, pixels, 6), ref)


def expand_everyone(dec, ids, mask, pixels, top):
    """Blink-interp's edit at layer 1 expanding tiles ``top`` [B] (2 x 2 tokens to 4 x 4) for every
    sample -> (the Blink, the prepared state, the state with SR tokens)."""
    blink = Blink(BlinkConfig(layers=(1, 3), mode="interp", region=2, factor=2), None)
    everyone = torch.ones(len(ids), dtype=torch.bool)
    with torch.no_grad():
        state = dec.prepare(ids, pixels, mask)
        return blink, state, blink._edit(dec, 1, state, everyone, everyone, top)


def test_appended_tokens_sit_at_their_cells(llava):
    """SR tokens go between the visual block and the question, each at the position of the cell it
    subdivides; the question keeps its positions; dropping restores the sequence exactly."""
    ids, mask, pixels = prompts()
    top = torch.tensor([0, 5, 15])  # tiles of the 4 x 4 tiling of the 8 x 8 grid
    dec = LlavaDecoder(llava)
    blink, state, grown = expand_everyone(dec, ids, mask, pixels, top)
    B, everyone = len(ids), torch.ones(len(ids), dtype=torch.bool)
    assert grown.n_extra == 16 and grown.h.shape[1] == ids.shape[1] + 16
    prefix, nv = 3, 64
    assert torch.equal(grown.h[:, :prefix + nv], state.h[:, :prefix + nv])
    assert torch.equal(grown.h[:, prefix + nv + 16:], state.h[:, prefix + nv:])
    cells = grown.pos[:, prefix + nv:prefix + nv + 16] - prefix
    r0, c0 = (top // 4) * 2, (top % 4) * 2
    for b in range(B):  # sub-cell (y, x) of the 4 x 4 SR grid belongs to cell (r0 + y // 2, c0 + x // 2)
        expect = [(int(r0[b]) + y // 2) * 8 + int(c0[b]) + x // 2 for y in range(4) for x in range(4)]
        assert cells[b].tolist() == expect
    assert torch.equal(grown.pos[:, prefix + nv + 16:], state.pos[:, prefix + nv:])
    dropped = blink._edit(dec, 2, grown, ~everyone, ~everyone, top)
    assert torch.equal(dropped.h, state.h) and torch.equal(dropped.pos, state.pos)


def test_blink_expands_and_drops_per_sample(llava):
    """A trigger between the samples' concentrations: some expand, some drop later; a batch gives each
    sample what it gets alone, and split sub-batches equal the single-batch reference."""
    dec = LlavaDecoder(llava)
    ids, mask, pixels = prompts()
    probe = BlinkTrace()
    with torch.no_grad():
        dec.run(dec.prepare(ids, pixels, mask), Blink(BlinkConfig(layers=(1, 4), mode="interp", tau_exp=math.inf),
                                                      None), probe)
    rho = torch.stack(probe.rho)  # [layers, B]
    tau_exp = float(rho[0].median())
    tau_drop = min(tau_exp, float(rho[1:].max()) + 1e-4)
    outs, traces = [], []
    for split in (False, True):
        trace = BlinkTrace()
        blink = Blink(BlinkConfig(layers=(1, 4), mode="interp", tau_exp=tau_exp, tau_drop=tau_drop,
                                  split_batches=split), None)
        with torch.no_grad():
            outs.append(dec.run(dec.prepare(ids, pixels, mask), blink, trace))
        traces.append(torch.stack(trace.active))
    active = traces[1]
    assert bool(active[0].any()) and not bool(active[0].all())  # some expand, some do not
    assert bool((active[:-1] & ~active[1:]).any())  # and some drop later
    assert torch.equal(traces[0], traces[1])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        alone = torch.cat([dec.run(dec.prepare(ids[b:b + 1, :int(mask[b].sum())], pixels[b:b + 1]), blink)
                           for b in range(len(ids))])
    torch.testing.assert_close(outs[1], alone, atol=1e-5, rtol=1e-5)
    ref = _last_logits(llava, ids, mask, pixels)
    assert not torch.allclose(outs[1], ref, atol=1e-4)


def test_generate_with_blink_uses_the_expanded_prompt(llava):
    """With a cache, generation after an expansion differs from generation without one only through the
    prompt pass: its first token is the arg-max of Blink's prompt logits."""
    dec = LlavaDecoder(llava)
    ids, _, pixels = prompts(1)
    blink = Blink(BlinkConfig(layers=(1, 3), mode="interp", tau_exp=0.0, tau_drop=0.0), None)
    with torch.no_grad():
        logits = dec.run(dec.prepare(ids, pixels), blink)
    tokens = dec.generate(ids, pixels, 4, blink=blink)
    assert tokens.shape == (1, 4) and int(tokens[0, 0]) == int(logits.argmax())


def tokensr_step_lowers_its_loss(dec, model, ids, mask, pixels, tiles):
    """Five Adam steps on TokenSR's loss against the frozen model's zoomed-crop hidden states lower it;
    the model gets no gradient."""
    bank = TokenSRBank(layers=(1,), dim=64, hidden=16, factor=2)
    opt = torch.optim.Adam(bank.parameters(), lr=1e-3)
    before = tokensr_loss(dec, bank, 1, ids, pixels, 2, 2, mask, tiles)
    assert before.requires_grad and not any(p.requires_grad and p.grad is not None for p in model.parameters())
    for _ in range(5):
        opt.zero_grad()
        tokensr_loss(dec, bank, 1, ids, pixels, 2, 2, mask, tiles).backward()
        opt.step()
    after = tokensr_loss(dec, bank, 1, ids, pixels, 2, 2, mask, tiles)
    assert float(after.detach()) < float(before.detach())
    assert all(p.grad is None for p in model.parameters())  # the MLLM stays frozen


def test_tokensr_training_step_lowers_its_loss(llava):
    ids, mask, pixels = prompts()
    tokensr_step_lowers_its_loss(LlavaDecoder(llava), llava, ids, mask, pixels, torch.tensor([0, 6, 9]))


def test_vicrop_appends_the_zoomed_crop(llava):
    dec = LlavaDecoder(llava)
    ids, mask, pixels = prompts()
    out = vicrop(dec, ids, pixels, layer=1, region=2, factor=2, attention_mask=mask)
    ref = _last_logits(llava, ids, mask, pixels)
    assert out.shape == ref.shape and torch.isfinite(out).all() and not torch.allclose(out, ref, atol=1e-4)


def tiny_llava_folder(path):
    """A loadable LLaVA folder: the tiny model + a word-level tokenizer and CLIP image processor built here."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", *"USER ASSISTANT : what color is the circle ? red blue".split()]
    vocab = {w: i for i, w in enumerate(words + [f"w{i}" for i in range(IMAGE - len(words))])}
    vocab["<image>"] = IMAGE
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.add_tokens(["<image>"], special_tokens=True)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=4, image_token="<image>",
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    model = tiny_llava()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor


def test_vqa_command_answers_with_a_local_llava_folder(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from mmgen.mllm.cli import main
    from mmgen.mllm.hf import encode_prompts

    folder = tmp_path / "llava"
    model, processor = tiny_llava_folder(folder)
    rgb = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "scene.png")
    question = "what color is the circle ?"
    ids, mask, pixels = encode_prompts(processor, [rgb], [question])
    ref = model.generate(input_ids=ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=5, do_sample=False)
    expect = processor.tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True).strip()
    common = ["--model", str(folder), "--image", str(tmp_path / "scene.png"), "--question", question,
              "--max-new-tokens", "5", "--device", "cpu"]
    assert main(common) == 0
    assert capsys.readouterr().out.strip() == expect
    assert main([*common, "--blink-interp", "--blink-layers", "1", "3", "--region", "2"]) == 0
    assert capsys.readouterr().out.strip()  # an answer (Blink may change it)
    assert main([*common, "--blink", "--tokensr", str(tmp_path / "none")]) == 2
    assert "fit-tokensr" in capsys.readouterr().err


@pytest.mark.slow
def test_llava_bench_script_scores_pope_files_and_trains_tokensr(tmp_path, capsys):
    folder = tmp_path / "llava"
    tiny_llava_folder(folder)
    bench_script_scores_pope_files_and_trains_tokensr(folder, tmp_path, capsys)


def bench_script_scores_pope_files_and_trains_tokensr(folder, tmp_path, capsys, *args: str):
    """bench/blink_llava.py on a tiny folder: a missing image is skipped and named, the rest scored;
    --fit-tokensr writes a bank the Blink row then uses (shared with Qwen2-VL's test)."""
    import importlib.util

    import numpy as np
    from PIL import Image

    spec = importlib.util.spec_from_file_location("blink_llava", "bench/blink_llava.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append({"image": f"{i}.png", "text": "is the circle red ?", "label": "yes" if i % 2 else "no"})
    lines.append({"image": "missing.png", "text": "is the circle red ?", "label": "no"})
    (tmp_path / "pope.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    common = ["--model", str(folder), "--pope", str(tmp_path / "pope.jsonl"), "--image-root", str(tmp_path),
              "--blink-layers", "1", "3", "--region", "2", "--device", "cpu", "--batch-size", "2", *args]
    assert bench.main([*common, "--fit-tokensr", str(tmp_path / "sr"), "--steps", "2", "--hidden", "8"]) == 0
    assert (tmp_path / "sr" / "config.json").is_file()
    capsys.readouterr()
    assert bench.main([*common, "--tokensr", str(tmp_path / "sr")]) == 0
    out, err = capsys.readouterr()
    assert "skipped" in err and "missing.png" in err and "4 question(s) done, 1 skipped" in err
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert {"vanilla", "Blink-interp", "Blink", "ViCrop"} <= set(rows)
    assert "4 questions" in out
