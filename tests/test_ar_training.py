"""ARModule + `mmgen ar` CLI: learning on a fixed batch, fit/resume/export, NaN stop, latent cache."""
import json
import math

import pytest
import torch
import yaml

from mmgen.ar import VideoAR
from mmgen.ar.cli import main
from mmgen.ar.training import ARModule, NonFiniteLossError, ar_loss

TOK = dict(base_channels=8, latent_dim=16, sample_size=32, scales=[1, 2, 4], num_frames=5)
GEN = dict(bits=16, scales=[[1, 1], [2, 2], [4, 4]], num_frames=2, width=64, depth=2, heads=4,
           cond="text", max_text_len=88)


def _batch(n=4):
    from mmgen.data import MovingShapes

    ds = MovingShapes(n, size=32, num_frames=5, seed=0)
    items = [ds[i] for i in range(n)]
    return {"video": torch.stack([s["video"] for s in items]), "caption": [s["caption"] for s in items],
            "label": torch.tensor([s["label"] for s in items])}


def test_module_learns_a_fixed_batch():
    torch.manual_seed(0)
    module = ARModule(preset=None, generator=GEN, tokenizer_config=TOK, cond_dropout=0.0,
                      corruption={"enabled": False})
    batch = _batch()
    opt = torch.optim.AdamW(module.model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, _ = module._step(batch, train=True)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(first - math.log(2)) < 1e-3
    assert loss.item() < 0.6, loss.item()  # memorising: clearly below chance (ln 2 = 0.693)


def test_frame_offset_draws_reach_the_model():
    torch.manual_seed(0)
    module = ARModule(preset=None, generator={**GEN, "frame_window": 1}, tokenizer_config=TOK,
                      frame_offset_max=3)
    seen, forward = [], module.model.forward

    def spy(cond, inputs, keep=None, frame_offset=0, **kwargs):
        seen.append(frame_offset)
        return forward(cond, inputs, keep, frame_offset, **kwargs)

    module.model.forward = spy
    batch = _batch(2)
    with torch.no_grad():
        for _ in range(40):
            module._step(batch, train=True)
        module._step(batch, train=False)
    assert seen[-1] == 0  # validation keeps the plain layout
    train = seen[:-1]
    assert set(train) == {0, 1, 2, 3} and 8 <= train.count(0) <= 32  # about half the batches unshifted


def test_partial_reveal_shows_true_codes_and_scores_only_the_rest():
    torch.manual_seed(0)
    module = ARModule(preset=None, generator={**GEN, "reveal_scales": [2]}, tokenizer_config=TOK, reveal_p=1.0)
    batch = _batch(4)
    with torch.no_grad():
        _, targets, inputs, cond, _ = module._inputs(batch, train=True)
        revealed, scored = module._reveal(targets)
    on = revealed[2].abs().amax(-1) > 0
    assert not revealed[0].any() and not revealed[1].any()
    assert torch.equal(revealed[2][on], targets[2][on]) and 0 < on.float().mean() < 1
    layout = module.model.layout(targets[0].shape[1])
    assert torch.equal(~scored, layout.flatten_visual([t.abs().amax(-1) > 0 for t in revealed]))
    # the loss is the mean over the scored tokens only
    logits = torch.randn(scored.shape[0], scored.shape[1], 16)
    loss, _ = ar_loss(logits, targets, module.model, scored)
    bits = (layout.flatten_visual(targets) > 0).float()
    per_token = torch.nn.functional.binary_cross_entropy_with_logits(logits, bits, reduction="none").mean(-1)
    assert torch.allclose(loss, per_token[scored].mean())
    loss, _ = module._step(batch, train=True)  # the revealed codes reach the model
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="reveal_scales"):
        ARModule(preset=None, generator=GEN, tokenizer_config=TOK, reveal_p=0.5)


def _config(tmp_path, **trainer):
    cfg = {
        "seed_everything": 0,
        "model": {"preset": None, "generator": GEN, "tokenizer_config": TOK, "warmup_steps": 2,
                  "ema_decay": 0.9},
        "data": {"train": {"class_path": "mmgen.data.MovingShapes",
                           "init_args": {"num_samples": 8, "size": 32, "num_frames": 5}},
                 "batch_size": 4},
        "trainer": {"accelerator": "cpu", "max_steps": 3, "default_root_dir": str(tmp_path / "run"),
                    "log_every_n_steps": 1, "enable_progress_bar": False, "logger": {
                        "class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": str(tmp_path / "run")}}, **trainer},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_fit_resume_export(tmp_path):
    cfg = _config(tmp_path)
    assert main(["fit", "--config", str(cfg)]) == 0
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and (run / "loss_curve.png").stat().st_size > 1000
    # resume for two more steps: global step continues from 3
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "5", "--ckpt_path", str(last)]) == 0
    resumed = torch.load(tmp_path / "run" / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt",
                         weights_only=True)
    assert resumed["global_step"] == 5
    assert main(["export", str(last), str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "model_index.json").is_file()  # a pipeline folder `mmgen sample` loads
    # training.json: which checkpoint, which step, and the settings of the run that wrote it
    record = json.loads((tmp_path / "export" / "training.json").read_text())
    assert (record["global_step"], record["weights"]) == (3, "ema")
    assert record["config"]["trainer"]["max_steps"] == 3 and record["config"]["data"]["batch_size"] == 4
    loose = tmp_path / "loose.ckpt"  # a checkpoint outside its run folder: no config to vouch for
    loose.write_bytes(last.read_bytes())
    assert main(["export", str(loose), str(tmp_path / "export2"), "--no-ema"]) == 0
    record = json.loads((tmp_path / "export2" / "training.json").read_text())
    assert "config" not in record and (record["global_step"], record["weights"]) == (3, "raw")
    gen = VideoAR.from_pretrained(tmp_path / "export" / "transformer")
    assert gen.config.width == 64
    assert json.loads((tmp_path / "export" / "tokenizer" / "config.json").read_text())["sample_size"] == 32
    state = torch.load(last, weights_only=True)["state_dict"]
    assert torch.equal(gen.state_dict()["out_proj.weight"], state["ema.out_proj.weight"])


def test_checkpoint_holds_the_ema_of_its_own_step(tmp_path):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from mmgen.data import MovingShapes

    # decay ~0: the EMA copy is the model itself, so any lag shows as a difference
    module = ARModule(preset=None, generator=GEN, tokenizer_config=TOK, warmup_steps=1, ema_decay=1e-12)
    every = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[every], default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(MovingShapes(8, size=32, num_frames=5, seed=0), batch_size=4))
    state = torch.load(next(tmp_path.glob("*step=2.ckpt")), weights_only=True)["state_dict"]
    for key, value in state.items():
        if key.startswith("model."):
            torch.testing.assert_close(state["ema." + key[len("model."):]], value, rtol=0, atol=1e-9, msg=key)


def test_nan_loss_stops_with_message_and_keeps_no_bad_checkpoint(tmp_path):
    import lightning.pytorch as pl

    from mmgen.data.latents import ARDataModule
    from mmgen.data import MovingShapes

    module = ARModule(preset=None, generator=GEN, tokenizer_config=TOK)
    with torch.no_grad():
        module.model.out_proj.weight.fill_(float("nan"))
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, default_root_dir=str(tmp_path), logger=False,
                         enable_progress_bar=False)
    data = ARDataModule(MovingShapes(8, size=32, num_frames=5), batch_size=4)
    with pytest.raises(NonFiniteLossError, match="step 0"):
        trainer.fit(module, datamodule=data)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_latent_cache_roundtrip(tmp_path):
    from mmgen.data.latents import LatentCache, tokenize_dataset
    from mmgen.ar.training import load_tokenizer
    from mmgen.data import MovingShapes

    tok = load_tokenizer(config=TOK)
    ds = MovingShapes(5, size=32, num_frames=5)
    tokenize_dataset(ds, tok, tmp_path / "cache", batch_size=2, shard_size=2)
    cache = LatentCache(str(tmp_path / "cache"))
    assert len(cache) == 5 and len(cache.meta["shards"]) == 3
    item = cache[3]
    assert item["caption"] == ds[3]["caption"] and item["label"] == ds[3]["label"]
    with torch.no_grad():
        z = tok.encode(ds[3]["video"][None])[0]
    assert torch.allclose(item["latent"], z, atol=2e-2 * z.abs().max().item())
    with pytest.raises(FileNotFoundError, match="mmgen ar tokenize"):
        LatentCache(str(tmp_path / "nothing"))


def test_fit_refuses_a_latent_cache_written_by_another_tokenizer(tmp_path, caplog):
    """A model trained on latents of tokenizer A but exported with tokenizer B draws noise: the
    cache records its tokenizer's weights and fit checks them before the first step."""
    import lightning.pytorch as pl

    from mmgen.ar.training import load_tokenizer
    from mmgen.data import MovingShapes
    from mmgen.data.latents import ARDataModule, LatentCache, tokenize_dataset

    torch.manual_seed(0)
    writer = load_tokenizer(config=TOK)
    tokenize_dataset(MovingShapes(4, size=32, num_frames=5), writer, tmp_path / "cache", batch_size=4)
    writer.save_pretrained(str(tmp_path / "tok"))
    cache = LatentCache(str(tmp_path / "cache"))
    cache.check_tokenizer(load_tokenizer(str(tmp_path / "tok")))  # the same weights, saved and loaded

    module = ARModule(preset=None, generator=GEN, tokenizer_config=TOK)  # freshly initialised: another tokenizer
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="written by another tokenizer"):
        trainer.fit(module, datamodule=ARDataModule(cache, batch_size=2))
    assert trainer.global_step == 0

    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    del meta["tokenizer_sha256"]  # a cache from before the fingerprint: loads, and says it cannot check
    (tmp_path / "cache" / "meta.json").write_text(json.dumps(meta))
    LatentCache(str(tmp_path / "cache")).check_tokenizer(module.tokenizer)
    assert "predates tokenizer fingerprints" in caplog.text


def test_missing_tokenizer_folder_is_named(tmp_path):
    from mmgen.ar.training import load_tokenizer

    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_tokenizer(str(tmp_path / "tok"))


@pytest.mark.parametrize("name", ["tiny", "videoar_l_ucf101", "videoar_xl_ucf101"])
def test_training_configs_parse(name, capsys):
    from pathlib import Path

    cfg = Path(__file__).parents[1] / "configs" / "generator" / f"{name}.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(cfg), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["preset"] in ("tiny", "videoar-l", "videoar-xl")


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_default_build_stage_configs_lay_over_the_earlier_ones(stage, capsys):
    """Stage N of the default build reads stages 1..N's configs (scripts/build_default_model.sh): the
    stack parses, the model is the same generator at every stage, each stage starts from the one
    before and writes checkpoints only into its own folder."""
    from pathlib import Path

    configs = Path(__file__).parents[1] / "configs" / "generator"
    stack = [a for k in range(1, stage + 1) for a in ("--config", str(configs / f"moving_shapes_default_stage{k}.yaml"))]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *stack, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    folder = f"runs/default_model/stage{stage}"
    assert printed["trainer"]["default_root_dir"] == folder
    assert [c["init_args"]["dirpath"] for c in printed["trainer"]["callbacks"]] == [f"{folder}/checkpoints"]
    assert printed["trainer"]["logger"]["init_args"]["save_dir"] == folder
    assert printed["model"]["generator"]["width"] == 128 and printed["model"]["generator"]["frame_window"] == 2
    expected_start = None if stage == 1 else f"runs/default_model/stage{stage - 1}/export/transformer"
    assert printed["model"]["init_from"] == expected_start
    assert printed["data"]["train"]["init_args"]["latent_frames"] == (2 if stage == 1 else None)


def test_run_checkpoint_keeps_the_final_step(tmp_path):
    import lightning.pytorch as pl

    from mmgen.ar.callbacks import RunCheckpoint
    from mmgen.data.latents import ARDataModule
    from mmgen.data import MovingShapes

    module = ARModule(preset=None, generator=GEN, tokenizer_config=TOK)
    ckpt = RunCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False, callbacks=[ckpt])
    trainer.fit(module, datamodule=ARDataModule(MovingShapes(8, size=32, num_frames=5), batch_size=2))
    # a plain ModelCheckpoint would have left last.ckpt at step 2
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
