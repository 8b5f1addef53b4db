"""The synthetic VQA set, the word vocabulary, the MLLM, image loading and the `mmgen vqa` CLI."""
import numpy as np
import pytest
import torch
from PIL import Image

from mmgen.mllm import cli
from mmgen.mllm.data import ANSWERS, NORMAL_SIZES, QUADRANTS, SIZES, VQADataset
from mmgen.mllm.image import load_image
from mmgen.mllm.lightning import MLLMModule, TokenSRModule, target_patches, target_tiles
from mmgen.mllm.model import TinyLlava, zoom_view
from mmgen.mllm.text import PAD_ID, VOCAB, batch_encode, encode

TINY = dict(image_size=32, patch=8, vit_dim=32, vit_depth=1, vit_heads=1, dim=32, depth=4, heads=1, mlp_ratio=2.0)


# ------------------------------------------------------------------ data
def test_dataset_is_deterministic_and_splits_differ():
    a, b = VQADataset(10, "train", seed=0), VQADataset(10, "train", seed=0)
    assert all(np.array_equal(a.sample(i).image, b.sample(i).image) for i in range(3))
    v = VQADataset(10, "val", seed=0)
    assert not np.array_equal(a.sample(0).image, v.sample(0).image)
    assert not np.array_equal(a.sample(0).image, VQADataset(10, "train", seed=1).sample(0).image)


def test_answers_are_consistent_with_the_scene():
    ds = VQADataset(200, "val")
    for i in range(200):
        s = ds.sample(i)
        assert s.answer in ANSWERS
        words = s.question.split()
        objs = s.objects
        if s.qtype == "color":
            matches = [o for o in objs if o.shape == words[4]]
            assert len(matches) == 1 and matches[0].color == s.answer
        elif s.qtype == "shape":
            matches = [o for o in objs if o.color == words[4]]
            assert len(matches) == 1 and matches[0].shape == s.answer
        elif s.qtype == "count":
            assert sum(o.color == words[2] for o in objs) == int(s.answer)
        elif s.qtype == "position":
            match = [o for o in objs if (o.color, o.shape) == (words[3], words[4])]
            assert len(match) == 1 and match[0].quadrant(ds.hires) == s.answer and s.answer in QUADRANTS
        else:
            present = any((o.color, o.shape) == (words[3], words[4]) for o in objs)
            assert s.answer == ("yes" if present else "no")
        pairs = [(o.color, o.shape) for o in objs]
        assert len(pairs) == len(set(pairs))  # every question names one object


def test_finegrained_targets_are_tiny_and_smaller_than_a_patch():
    ds = VQADataset(60, "finegrained")
    for i in range(60):
        s = ds.sample(i)
        if s.target_bbox is not None:
            x0, y0, x1, y1 = s.target_bbox
            assert (x1 - x0) == pytest.approx(2 * SIZES["tiny"])
            assert (x1 - x0) * ds.size / ds.hires < 8  # smaller than one 8-px patch of the model input
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["hires"].shape == (128, 128, 3) and item["hires"].dtype == torch.uint8


# ------------------------------------------------------------------ text
def test_tiny_objects_only_in_the_finegrained_split_unless_asked_for():
    normal = [VQADataset(40, split).sample(i) for split in ("train", "val") for i in range(40)]
    assert all(o.size in NORMAL_SIZES for s in normal for o in s.objects)
    fine = [VQADataset(40, "finegrained").sample(i) for i in range(40)]
    assert sum(o.size == "tiny" for s in fine for o in s.objects) >= 40  # every question has a tiny target/decoy
    mixed = [VQADataset(60, "train", sizes=tuple(SIZES)).sample(i) for i in range(60)]
    assert {o.size for s in mixed for o in s.objects} == set(SIZES)
    with pytest.raises(ValueError, match="sizes"):
        VQADataset(4, "train", sizes=("huge",))


def test_text_encoding_and_errors():
    ids, lengths = batch_encode(["what color is the circle ?", "is there a red square?"], 16)
    assert lengths.tolist() == [6, 6] and ids.dtype == torch.long
    assert VOCAB[ids[1, -1]] == "?"
    with pytest.raises(ValueError, match="empty question"):
        encode("   ", 16)
    with pytest.raises(ValueError, match="context allows 16"):
        encode(" ".join(["the"] * 17), 16)
    with pytest.raises(ValueError, match="purple"):
        encode("what color is the purple circle ?", 16)
    padded, _ = batch_encode(["what ?", "what color is the circle ?"], 16)
    assert padded[0, 2:].eq(PAD_ID).all()


# ------------------------------------------------------------------ model
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyLlava(**TINY).eval()


def _batch(n=4, split="val"):
    ds = VQADataset(n, split, size=32, hires=64)
    items = [ds[i] for i in range(n)]
    ids, lengths = batch_encode([it["question"] for it in items], 16)
    return items, torch.stack([it["image"] for it in items]), ids, lengths


def test_padding_does_not_change_a_sample(model):
    _, images, ids, lengths = _batch()
    with torch.no_grad():
        together = model(images, ids, lengths)
        alone = torch.cat([model(images[i:i + 1], ids[i:i + 1, :lengths[i]]) for i in range(4)])
    assert together.shape == (4, len(VOCAB))
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_inactive_appended_tokens_are_invisible(model):
    items, images, ids, lengths = _batch()
    r0 = c0 = torch.zeros(4, dtype=torch.long)
    zoom = zoom_view(model, torch.stack([it["hires"] for it in items]), r0, c0, 2, 2)
    assert zoom.shape == (4, 16, model.config.dim)
    pos = model.region_positions(r0, c0, 2, 2)
    with torch.no_grad():
        vanilla = model(images, ids, lengths)
        off = model(images, ids, lengths, extra=zoom, extra_pos=pos, extra_active=torch.zeros(4, dtype=torch.bool))
        on = model(images, ids, lengths, extra=zoom, extra_pos=pos)
    torch.testing.assert_close(off, vanilla, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(on, vanilla, atol=1e-4)


def test_merge_is_the_inverse_of_select(model):
    items, images, ids, lengths = _batch()
    r0 = c0 = torch.zeros(4, dtype=torch.long)
    extra = torch.randn(4, 16, model.config.dim)
    with torch.no_grad():
        for state in (model.prepare(images, ids, lengths),
                      model.set_extra(model.prepare(images, ids, lengths), extra, model.region_positions(r0, c0, 2, 2))):
            a, b = torch.tensor([2, 0]), torch.tensor([3, 1])
            merged = model.merge([model.select(state, a), model.select(state, b)])
            whole = model.select(state, torch.cat([a, b]))
            for field in ("h", "pos", "mask", "extra_active", "text_lengths"):
                x, y = getattr(merged, field), getattr(whole, field)
                assert (x is None and y is None) or torch.equal(x, y), field
            torch.testing.assert_close(model.readout(merged), model.readout(whole))
        with pytest.raises(ValueError, match="layout"):
            model.merge([model.prepare(images, ids, lengths),
                         model.set_extra(model.prepare(images, ids, lengths), extra, model.region_positions(r0, c0, 2, 2))])


def test_target_tiles_follow_the_bbox(model):
    bbox = torch.tensor([[1.0, 1.0, 3.0, 3.0], [20.0, 20.0, 24.0, 24.0], [-1.0, -1.0, -1.0, -1.0]])
    tiles = target_tiles(model, bbox, 2)  # 32 px / 8 px patch = 4x4 grid -> 2x2 tiles of 16 px
    assert tiles[:2].tolist() == [0, 3] and 0 <= tiles[2] < 4


def test_visual_position_embedding_marks_where_a_token_is():
    torch.manual_seed(0)
    flat = torch.zeros(1, 3, 32, 32)  # every patch looks the same: only position can tell them apart
    plain = TinyLlava(**TINY).eval()
    placed = TinyLlava(**TINY, visual_pos_embed=True).eval()
    with torch.no_grad():
        h_plain, h_placed = plain.prepare(flat).h[0], placed.prepare(flat).h[0]
        torch.testing.assert_close(h_plain[1:], h_plain[:1].expand(15, -1))
        assert not torch.allclose(h_placed[0], h_placed[1])
        pos = placed.region_positions(torch.tensor([2]), torch.tensor([0]), 2, 2)
        zoomed = placed.prepare(flat, extra=torch.zeros(1, 16, placed.config.dim), extra_pos=pos)
        torch.testing.assert_close(zoomed.h[0, 16:32], placed.position_embedding(pos[0]))  # appended at their sub-grid positions


def test_conv_stem_gives_one_token_per_patch_and_sees_inside_it():
    torch.manual_seed(0)
    conv = TinyLlava(**TINY, stem="conv").eval()
    x = torch.zeros(2, 3, 32, 32)
    x[1, :, 2, 3] = 1.0  # one pixel inside the first patch
    with torch.no_grad():
        f = conv.vit_features(x)
        raw = conv.patch_embed(x)
    assert f.shape == (2, 16, TINY["vit_dim"]) and raw.shape == (2, TINY["vit_dim"], 4, 4)
    changed = (raw[1] - raw[0]).abs().amax(0) > 0
    assert changed[0, 0] and changed.sum() == 1  # a pixel well inside a patch only reaches that patch
    with pytest.raises(ValueError, match="power-of-two"):
        TinyLlava(**{**TINY, "patch": 6, "image_size": 36}, stem="conv")
    with pytest.raises(ValueError, match="unknown stem"):
        TinyLlava(**TINY, stem="resnet")


def test_grounding_loss_is_the_saliency_of_the_target_patch(model):
    bbox = torch.tensor([[1.0, 1.0, 3.0, 3.0], [20.0, 9.0, 24.0, 13.0]])  # 4x4 grid of 8-px patches
    assert target_patches(model, bbox).tolist() == [0, 1 * 4 + 2]
    torch.manual_seed(0)
    ds = VQADataset(6, "train", size=32, hires=64)
    batch = torch.utils.data.default_collate([ds[i] for i in range(6)])
    with_ground = MLLMModule(model_config=TINY, zoom_prob=0.0, aux_weight=0.0, ground_weight=1.0)
    without = MLLMModule(model_config=TINY, zoom_prob=0.0, aux_weight=0.0, ground_weight=0.0)
    without.load_state_dict(with_ground.state_dict())
    m = with_ground.model
    has = batch["target_bbox"][:, 0] >= 0
    assert has.any()
    ids, lengths = batch_encode(batch["question"], 16)
    from mmgen.mllm.blink import saliency
    state, nll = m.prepare(batch["image"], ids, lengths), []
    with torch.no_grad():
        for i in range(m.num_layers):
            if i in (1, 2):
                sal = saliency(*m.query_keys(i, state))[has]
                nll.append(-sal.gather(1, target_patches(m, batch["target_bbox"][has])[:, None]).log())
            state = m.run_layer(i, state)
        extra = with_ground._step(batch, zoom=False)[0] - without._step(batch, zoom=False)[0]
    torch.testing.assert_close(extra, torch.cat(nll).mean(), atol=1e-5, rtol=1e-5)


def test_mllm_module_overfits_a_batch():
    torch.manual_seed(0)
    module = MLLMModule(model_config=TINY, lr=3e-3, warmup_steps=1, total_steps=40, zoom_prob=0.5)
    ds = VQADataset(8, "train", size=32, hires=64)
    batch = torch.utils.data.default_collate([ds[i] for i in range(8)])
    opt = module.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(40):
        loss, _ = module._step(batch, zoom=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _train_batch(n=4):
    ds = VQADataset(n, "train", size=32, hires=64)
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


def test_tokensr_module_pairs_and_loss(model):
    module = TokenSRModule(model, layers=(1, 3), region=2, factor=2, hidden=8, kd_weight=0.0)
    batch = _train_batch()
    ids, lengths = batch_encode(batch["question"], 16)
    pairs = module.pairs(batch, module.tiles(batch, ids, lengths))
    assert sorted(pairs) == [1, 2]
    region, target = pairs[1]
    assert region.shape == (4, 32, 2, 2) and target.shape == (4, 32, 4, 4)
    loss, mse, interp, kd, ce = module._losses(batch)
    assert kd is None and ce is None  # the hidden-state match alone
    torch.testing.assert_close(mse, interp)  # a fresh TokenSR is exactly interpolation
    loss.backward()
    assert all(p.grad is None for p in module.model.parameters())  # MLLM frozen
    assert any(p.grad is not None for p in module.bank.parameters())


def test_tokensr_training_regions_are_targets_or_blinks_choice(model):
    from mmgen.mllm.blink import Blink, BlinkConfig, BlinkTrace

    batch = _train_batch(6)
    ids, lengths = batch_encode(batch["question"], 16)
    trace = BlinkTrace()
    with torch.no_grad():
        Blink(BlinkConfig(layers=(1, 3), mode="interp", tau_exp=float("inf"), tau_drop=0.0)).run(
            model, model.prepare(batch["image"], ids, lengths), trace)
    targets = target_tiles(model, batch["target_bbox"], BlinkConfig().region)  # TokenSR trains on the region Blink uses
    has = batch["target_bbox"][:, 0] >= 0
    always = TokenSRModule(model, layers=(1, 3), target_prob=1.0).tiles(batch, ids, lengths)
    never = TokenSRModule(model, layers=(1, 3), target_prob=0.0).tiles(batch, ids, lengths)
    assert torch.equal(always[has], targets[has]) and torch.equal(always[~has], trace.top[0][~has])
    assert torch.equal(never, trace.top[0])


def test_tokensr_student_is_what_blink_computes(model):
    """The distillation student (TokenSR tokens appended at layer l) is exactly Blink expanding at l."""
    from mmgen.mllm.blink import Blink, BlinkConfig, BlinkTrace

    module = TokenSRModule(model, layers=(1, 3), hidden=8, kd_weight=1.0)
    torch.manual_seed(2)
    for p in module.bank.parameters():
        torch.nn.init.normal_(p, std=0.1)
    items, images, ids, lengths = _batch()
    for layer in (1, 2):
        trace = BlinkTrace()
        with torch.no_grad():
            blink = Blink(BlinkConfig(layers=(layer, layer + 1), tau_exp=0.0, tau_drop=0.0), module.bank)
            expected = blink.run(model, model.prepare(images, ids, lengths), trace)
            got = module.student_logits(layer, images, ids, lengths, trace.top[0])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("term", ["kd", "ce"])
def test_tokensr_answer_terms_train_tokensr_only_and_go_down(model, term):
    torch.manual_seed(0)
    weights = {"kd_weight": 1.0 if term == "kd" else 0.0, "ce_weight": 1.0 if term == "ce" else 0.0}
    # 2x2 regions (16 appended tokens): with Blink's default 4 a random frozen model reads them too weakly for
    # the CE to fall 5% in 20 steps (3.80 -> 3.69)
    module = TokenSRModule(model, layers=(1, 3), region=2, hidden=8, mse_weight=0.0, **weights)
    batch = _train_batch(8)
    opt = torch.optim.Adam(module.bank.parameters(), lr=3e-2)
    values = []
    for _ in range(20):
        loss, _, _, kd, ce = module._losses(batch)
        assert (kd is None) == (term != "kd") and (ce is None) == (term != "ce")
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append((kd if term == "kd" else ce).item())
    assert all(p.grad is None for p in module.model.parameters())
    # a random frozen model reads the appended tokens only weakly: the CE can move a little only
    assert values[-1] < 0.95 * values[0]


# ------------------------------------------------------------------ images and CLI
def test_load_image_handles_modes_sizes_and_bad_files(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((30, 50), 200, np.uint8)).save(grey)
    arr, notes = load_image(grey)
    assert arr.shape == (50, 50, 3) and any("centred" in n for n in notes)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(big)
    arr, notes = load_image(big, max_side=100)
    assert arr.shape == (100, 100, 3) and any("downscaled" in n for n in notes)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(bad)
    with pytest.raises(ValueError, match="not found"):
        load_image(tmp_path / "missing.png")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model):
    from mmgen.mllm.tokensr import TokenSRBank

    root = tmp_path_factory.mktemp("vqa")
    cli.save_atomic(model, root / "model")
    cli.save_atomic(TokenSRBank((1, 2), model.config.dim, hidden=8), root / "model" / "tokensr")
    img = root / "scene.png"
    Image.fromarray(VQADataset(1, "val").sample(0).image).save(img)
    return root, img


def test_save_atomic_writes_a_whole_model_folder_and_replaces_only_its_own(tmp_path, model, capsys):
    from mmgen.cli_utils import UserError

    out = tmp_path / "m"
    cli.save_atomic(model, out)
    assert cli.load_model(str(out)).config.dim == model.config.dim
    with pytest.raises(UserError, match="--overwrite"):
        cli.save_atomic(model, out)
    cli.save_atomic(model, out, overwrite=True)
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an mmgen model folder"):
        cli.save_atomic(model, mine, overwrite=True)
    assert (mine / "todo.txt").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["m", "notes"]
    assert cli.main(["fit-tokensr", "--model", str(out), "--out", str(mine), "--steps", "1"]) == 2  # checked first
    assert "not an mmgen model folder" in capsys.readouterr().err


def test_save_load_roundtrip(saved, model):
    root, _ = saved
    loaded = cli.load_model(str(root / "model"))
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


def test_cli_answers_and_draws_saliency(saved, capsys):
    root, img = saved
    base = ["--image", str(img), "--question", "what color is the circle ?", "--model", str(root / "model")]
    assert cli.main(base) == 0
    plain = capsys.readouterr().out.strip()
    assert plain in VOCAB
    out_png = root / "sal.png"
    assert cli.main(base + ["--blink", "--tau-exp", "0", "--tau-drop", "0", "--show-saliency", str(out_png)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[0] in VOCAB
    assert Image.open(out_png).size[0] > 100


def test_cli_errors_are_clear(saved, capsys, tmp_path):
    root, img = saved
    model = ["--model", str(root / "model")]
    assert cli.main(["--image", str(img), "--question", "", *model]) == 2
    assert "empty question" in capsys.readouterr().err
    assert cli.main(["--image", str(tmp_path / "nope.png"), "--question", "is there a red circle ?", *model]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert cli.main(["--image", str(img), "--question", "is there a red circle ?", "--model", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_eval_finishes_good_splits_and_names_bad_ones(saved, capsys):
    root, _ = saved
    common = ["eval", "--model", str(root / "model"), "--samples", "4", "--batch-size", "4", "--device", "cpu"]
    assert cli.main([*common, "--split", "val", "bogus"]) == 0
    out, err = capsys.readouterr()
    assert "| val | vanilla |" in out and "skipped bogus: unknown split" in err and "1 split(s) done, 1 skipped" in err
    assert cli.main([*common, "--split", "val", "bogus", "--strict"]) == 1
    assert cli.main([*common, "--split", "bogus"]) == 1  # nothing succeeded
    capsys.readouterr()


@pytest.mark.slow
def test_eval_table_reports_progress_when_not_on_a_terminal(saved, capsys):
    root, _ = saved
    assert cli.main(["eval", "--table", "--model", str(root / "model"), "--split", "val", "--samples", "4",
                     "--batch-size", "2", "--repeats", "1", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "| val | Blink |" in out
    assert "vqa eval --table: 30/30 (100%)" in err  # 6 variants x (warm-up + 1 repeat x 2 batches + FLOPs + score)


def test_expected_errors_are_one_line_and_debug_shows_the_traceback(saved, capsys, tmp_path):
    root, img = saved
    argv = ["eval", "--model", str(tmp_path / "missing"), "--split", "val"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmgen vqa: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(FileNotFoundError):
        cli.main([*argv, "--debug"])


def test_patch_labels_mark_objects_including_tiny_ones():
    from mmgen.mllm.data import COLORS, SHAPES, SceneObject, patch_labels

    tiny = SceneObject("diamond", "blue", "tiny", cx=70.0, cy=10.0)  # hires 128 -> grid 8 -> 16 px cells
    large = SceneObject("circle", "red", "large", cx=32.0, cy=96.0)
    labels = patch_labels([tiny, large], hires=128, grid=8).reshape(8, 8, 2)
    assert labels[0, 4].tolist() == [list(COLORS).index("blue") + 1, SHAPES.index("diamond") + 1]
    assert labels[6, 2, 0] == list(COLORS).index("red") + 1 and labels[5, 1, 0] == list(COLORS).index("red") + 1
    assert (labels[..., 0] > 0).sum() == 1 + 4  # the tiny object's cell + the 2x2 cells the circle's box fills
    assert labels[0, 0].tolist() == [0, 0]


def test_packaged_model_and_tokensr_answer_normal_questions():
    from mmgen.mllm.blink import Blink, BlinkConfig
    from mmgen.mllm.evaluate import load_split, score

    model = cli.load_model(None)
    bank = cli.load_tokensr(None, None)
    batches = load_split("val", 60, 5, model.config.image_size, 60, model.config.max_text_len, "cpu")
    vanilla, _, _ = score(model, None, batches)
    blink, expanded, _ = score(model, Blink(BlinkConfig(), bank), batches)
    assert vanilla["all"] > 0.8 and blink["all"] > 0.8  # chance is about 0.3
    assert expanded > 0


@pytest.mark.slow
def test_fit_starts_from_the_yaml_config_like_the_other_trainers(tmp_path):
    """`mmgen vqa fit` is a LightningCLI over configs/mllm/vqa.yaml; the trained model is saved to --out
    and a run resumes from its checkpoint."""
    import yaml

    cfg = yaml.safe_load(open("configs/mllm/vqa.yaml"))
    cfg["model"]["model_config"].update(dim=16, depth=2)
    cfg["model"]["ground_weight"] = 0.0
    cfg["data"].update(batch_size=4, train_samples=16)
    cfg["trainer"].update(accelerator="cpu", limit_val_batches=0)
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    small = ["--config", str(tmp_path / "small.yaml"), "--out", str(out), "--trainer.max_steps", "2"]
    assert cli.main(["fit", *small]) == 0
    model = cli.load_model(str(out))
    assert model.config.dim == 16 and model.config.stem == "conv" and model.config.visual_pos_embed
    last = tmp_path / "run-run" / "ckpt" / "last.ckpt"  # the run's files sit beside the model folder
    assert last.is_file() and sorted(p.name for p in out.iterdir()) == ["config.json",
                                                                       "diffusion_pytorch_model.safetensors"]
    assert cli.main(["fit", *small[:-1], "3", "--ckpt_path", str(last)]) == 2  # a model is there: --overwrite
    assert cli.main(["fit", *small[:-1], "3", "--ckpt_path", str(last), "--overwrite"]) == 0
