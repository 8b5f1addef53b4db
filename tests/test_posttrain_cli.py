"""`mmgen ar finetune` / `mmgen ar rl` on a tiny pipeline, GRPO pieces, bad input."""
import json

import pytest
import torch

from mmgen.ar.model import VideoAR
from mmgen.cli import main as mmgen_main
from mmgen.pipelines.videoar import VideoARPipeline
from mmgen.posttrain.rl import GRPOTrainer, RLConfig, next_state_index, token_weights, whiten
from mmgen.tokenizer.model import VideoTokenizer


def tiny_text_pipeline(depth=2):
    torch.manual_seed(0)
    tok = VideoTokenizer(base_channels=8, channel_mult=(1, 1, 1), temporal_downsample=(True, True), patch_size=1,
                         norm_groups=4, latent_dim=4, scales=(1, 2, 4), sample_size=16, num_frames=9)
    model = VideoAR(bits=4, scales=[(1, 1), (2, 2), (4, 4)], num_frames=3, width=32, depth=depth, heads=2,
                    max_text_len=40, attn_backend="sdpa")
    torch.nn.init.normal_(model.out_proj.weight, std=0.5)
    return VideoARPipeline(tokenizer=tok.eval(), transformer=model.eval(), fps=8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    tiny_text_pipeline().save_pretrained(path)
    return path


def weights(folder):
    return VideoARPipeline.from_pretrained(str(folder)).transformer.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora", "beamlora", "apex"])
def test_finetune_writes_a_loadable_model_of_the_same_architecture(model_dir, tmp_path, method, capsys):
    out = tmp_path / method
    rc = mmgen_main(["ar", "finetune", "--method", method, "--model", str(model_dir), "--out", str(out),
                     "--num-clips", "4", "--steps", "4", "--batch-size", "2", "--rank", "2", "--beam-interval", "2",
                     "--lr", "1e-2"] + (["--adapter-out", str(tmp_path / "adapter")] if method == "lora" else []))
    assert rc == 0, capsys.readouterr().err
    before, after = weights(model_dir), weights(out)
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["method"] == method and len(meta["loss"]) == 4 and meta["trainable_parameters"] > 0
    if method == "lora":
        assert (tmp_path / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--targets", "blocks.*.nothing"], "match no nn.Linear"),
    (["--rank", "0"], "rank must be >= 1"),
    (["--colors", "mauve"], "unknown colour"),
])
def test_finetune_bad_input(model_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    rc = mmgen_main(["ar", "finetune", "--model", str(model_dir), "--out", str(out), "--num-clips", "2",
                     "--steps", "1", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.strip().splitlines()[-1].startswith("mmgen ar finetune: error:")
    assert not out.exists()


def test_existing_out_is_not_replaced(model_dir, tmp_path, capsys):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    assert mmgen_main(["ar", "finetune", "--model", str(model_dir), "--out", str(out)]) == 2
    assert "not an mmgen model folder" in capsys.readouterr().err and (out / "mine.txt").is_file()
    assert mmgen_main(["ar", "finetune", "--model", str(model_dir), "--out", str(model_dir), "--overwrite"]) == 2
    assert "is or holds the input" in capsys.readouterr().err


def test_rl_bad_input(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a large red square moving right\nmake me a sandwich\n")
    rc = mmgen_main(["ar", "rl", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(tmp_path / "o")])
    assert rc == 2 and "prompt 2 'make me a sandwich'" in capsys.readouterr().err
    prompts.write_text("a large red square moving right\n")
    other = tmp_path / "other"
    tiny_text_pipeline(depth=1).save_pretrained(other)
    rc = mmgen_main(["ar", "rl", "--model", str(model_dir), "--ref", str(other), "--prompts", str(prompts),
                     "--out", str(tmp_path / "o")])
    assert rc == 2 and "differs from the policy's architecture (depth" in capsys.readouterr().err


@pytest.mark.parametrize("curiosity", [False, True])
def test_grpo_step_updates_policy_only(curiosity):
    pipe = tiny_text_pipeline()
    ref_before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    trainer = GRPOTrainer(pipe, ["a large red square moving right", "a small blue circle moving up"],
                          RLConfig(steps=1, group_size=2, lr=1e-3, num_frames=9, curiosity=curiosity),
                          log=lambda s: None)
    icm_before = [p.clone() for p in trainer.icm.parameters()] if curiosity else []
    hist = trainer.run()
    assert len(hist) == 1 and all(torch.isfinite(torch.tensor(v)) for k, v in hist[0].items() if k != "step")
    after = pipe.transformer.state_dict()
    assert any(not torch.equal(ref_before[k], after[k]) for k in after)
    assert all(torch.equal(ref_before[k], v) for k, v in trainer.ref.state_dict().items())
    if curiosity:
        assert any(not torch.equal(a, b) for a, b in zip(icm_before, trainer.icm.parameters()))
        assert 0 < hist[0]["not_greedy"] < 1


def test_grpo_trains_a_policy_that_arrives_frozen(monkeypatch):
    """A model fine-tuned with LoRA and merged has requires_grad off; RL must still train all of it."""
    import itertools

    import mmgen.posttrain.rl as rl

    rewards = itertools.count()
    monkeypatch.setattr(rl, "reward", lambda video, expected: (float(next(rewards)), {}))  # never a flat group
    pipe = tiny_text_pipeline()
    pipe.transformer.requires_grad_(False)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    GRPOTrainer(pipe, ["a large red square moving right"], RLConfig(steps=1, group_size=2, lr=1e-3, num_frames=9),
                log=lambda s: None).run()
    assert any(not torch.equal(before[k], v) for k, v in pipe.transformer.state_dict().items())


def test_equal_rewards_in_a_group_give_no_policy_gradient(monkeypatch):
    """GRPO's advantage is relative to the group: a group whose rewards are all equal carries no
    signal (at the first step the KL term is zero too, so the policy must not move)."""
    import mmgen.posttrain.rl as rl

    monkeypatch.setattr(rl, "reward", lambda video, expected: (0.5, {}))
    pipe = tiny_text_pipeline()
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    hist = GRPOTrainer(pipe, ["a large red square moving right"],
                       RLConfig(steps=1, group_size=3, lr=1e-2, num_frames=9), log=lambda s: None).run()
    assert hist[0]["flat_groups"] == 1.0 and hist[0]["group_std"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in pipe.transformer.state_dict().items())


def test_next_state_index_and_weights():
    m = tiny_text_pipeline().transformer
    layout = m.layout(2)
    nxt = next_state_index(layout)
    s = layout.visual_slice
    assert nxt[s(0, 0)].tolist() == [s(0, 1).start + 3]  # 1x1 -> 2x2: the centre lands in cell (1, 1)
    # 2x2 -> 4x4: each cell centre lands in cell (2i+1, 2j+1)
    assert (nxt[s(0, 1)] - s(0, 2).start).tolist() == [1 * 4 + 1, 1 * 4 + 3, 3 * 4 + 1, 3 * 4 + 3]
    assert (nxt[s(0, 2)] == s(1, 0).start).all()  # last scale -> next frame's first group
    assert (nxt[s(1, 2)] == -1).all()  # the very last group has no next state
    w = token_weights(layout)
    for t in range(2):
        for k in range(3):
            assert float(w[s(t, k)].sum()) == pytest.approx(1.0)


def test_whiten_keeps_or_drops_the_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    y = whiten(x, mask)
    assert float(y[mask].mean()) == pytest.approx(2.0) and float(y[mask].std()) == pytest.approx(1.0)
    z = whiten(x, mask, keep_mean=False)
    assert float(z[mask].mean()) == pytest.approx(0.0, abs=1e-6) and float(z[mask].std()) == pytest.approx(1.0)


@pytest.mark.slow
def test_rl_writes_a_loadable_model(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a large red square moving right\na small blue circle moving up\n")
    out = tmp_path / "rl"
    rc = mmgen_main(["ar", "rl", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out),
                     "--steps", "1", "--group-size", "2", "--lr", "1e-3", "--curiosity"])
    assert rc == 0, capsys.readouterr().err
    record = json.loads((out / "rl.json").read_text())
    assert len(record["history"]) == 1 and record["config"]["curiosity"] is True
    before, after = weights(model_dir), weights(out)
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
