"""Tokenizer training module and `mmgen tokenizer fit | export | reconstruct` end to end (tiny)."""
import json
import os

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from mmgen.data.moving_shapes import MovingShapes
from mmgen.io import write_video
from mmgen.tokenizer import VideoTokenizer
from mmgen.tokenizer.cli import main
from mmgen.checkpoint import AtomicModelCheckpoint
from mmgen.tokenizer.module import NonFiniteLossError, TokenizerModule

TINY = dict(
    base_channels=8, channel_mult=[1, 1, 2], temporal_downsample=[True, True], latent_dim=8,
    scales=[1, 2, 4], sample_size=32, num_frames=9, norm_groups=4,
)


def _config(run, steps, tokenizer=TINY, gan_weight=0.0):
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": steps, "default_root_dir": str(run),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(run), "name": "logs"}},
            "callbacks": [{"class_path": "mmgen.checkpoint.AtomicModelCheckpoint",
                           "init_args": {"dirpath": str(run / "checkpoints"), "every_n_train_steps": 1,
                                         "save_last": True}}],
            "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
            "limit_val_batches": 1, "log_every_n_steps": 1,
        },
        "model": {"tokenizer": tokenizer, "warmup_steps": 1, "gan_weight": gan_weight, "gan_start_step": 0,
                  "gan_warmup_steps": 1, "disc_channels": 4},
        "data": {"class_path": "mmgen.data.in_memory.InMemoryShapesDataModule",
                 "init_args": {"num_train": 2, "num_val": 1, "size": 32, "num_frames": 9, "train_frames": 5,
                               "batch_size": 2, "val_batch_size": 1}},
    }


def _write(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_help_works(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "reconstruct" in capsys.readouterr().out


def test_fit_resume_export_reconstruct(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "--config", _write(tmp_path / "a.yaml", _config(run, 2, gan_weight=1.0))]) == 0
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and (run / "logs").is_dir()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # loadable without pickle
    assert ckpt["global_step"] == 2 and ckpt["tokenizer_config"]["latent_dim"] == 8

    # resume for one more step
    assert main(["fit", "--config", _write(tmp_path / "b.yaml", _config(run, 3, gan_weight=1.0)),
                 "--ckpt_path", str(last)]) == 0
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3

    # resuming with another tokenizer config names the mismatched field
    other = _config(run, 4, tokenizer={**TINY, "latent_dim": 4})
    with pytest.raises(ValueError, match="latent_dim: checkpoint 8 vs model 4"):
        main(["fit", "--config", _write(tmp_path / "c.yaml", other), "--ckpt_path", str(last)])

    export_dir = tmp_path / "export"
    assert main(["export", str(last), str(export_dir)]) == 0
    tok = VideoTokenizer.from_pretrained(export_dir)
    assert tok.config.latent_dim == 8
    assert torch.equal(tok.quantizer.magnitudes, ckpt_magnitudes(last))

    videos = tmp_path / "videos"
    shapes = MovingShapes(2, size=32, num_frames=10)
    for i in range(2):
        write_video(videos / f"clip{i}.mp4", shapes.sample(i).frames)
    out = tmp_path / "recon"
    assert main(["reconstruct", "--model", str(export_dir), "--input", str(videos), "--out", str(out),
                 "--frames", "9"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert len(report["videos"]) == 2 and report["videos"][0]["frames"] == 9
    assert all(0 < r["psnr"] < 100 for r in report["videos"])
    assert (out / "clip0_recon.mp4").is_file() and (out / "metrics.csv").is_file()


def ckpt_magnitudes(path):
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return state["tokenizer.quantizer.magnitudes"]


class _Data(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader([{"video": torch.rand(3, 5, 32, 32) * 2 - 1}] * 8, batch_size=1)


class _PoisonAt(L.Callback):
    """Makes the decoder output NaN from training step ``step`` on."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            pl_module.tokenizer.decoder.conv_out.conv.bias.data.fill_(float("nan"))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    ckpt_dir = tmp_path / "ck"
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[AtomicModelCheckpoint(dirpath=str(ckpt_dir), every_n_train_steps=1, save_last=True), _PoisonAt(3)],
    )
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3"):
        trainer.fit(TokenizerModule(tokenizer=TINY, warmup_steps=1), datamodule=_Data())
    last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not any(p.name.endswith(".tmp") for p in ckpt_dir.iterdir())


def test_export_rejects_missing_checkpoint(tmp_path):
    from mmgen.cli_utils import UserError

    with pytest.raises(UserError, match="checkpoint .*nope.ckpt not found"):
        main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.environ.get("MMGEN_LPIPS_VGG"), reason="needs local LPIPS weights (MMGEN_LPIPS_VGG/_LIN)")
def test_lpips_from_local_files():
    from mmgen.tokenizer.losses import LPIPS

    lp = LPIPS(os.environ["MMGEN_LPIPS_VGG"], os.environ["MMGEN_LPIPS_LIN"])
    x = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    assert lp(x, x) < 1e-6 < lp(x, -x)


def test_lpips_missing_file_names_it(tmp_path):
    from mmgen.tokenizer.losses import LPIPS

    with pytest.raises(FileNotFoundError, match="vgg16"):
        LPIPS(str(tmp_path / "vgg.pth"), str(tmp_path / "lin.pth"))


@pytest.mark.slow
def test_short_training_improves_reconstruction(tmp_path):
    """A few hundred CPU steps of the tiny recipe clearly beat the untrained model on held-out clips."""
    from mmgen.tokenizer.cli import load_checkpoint_tokenizer
    from mmgen.tokenizer.quality import psnr

    cfg = _config(tmp_path / "run", 300, tokenizer={})
    cfg["model"].update({"lr": 2e-3, "warmup_steps": 20})
    cfg["data"]["init_args"].update({"num_train": 128, "size": 64, "num_frames": 17, "batch_size": 4})
    cfg["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 100
    assert main(["fit", "--config", _write(tmp_path / "s.yaml", cfg)]) == 0
    trained = load_checkpoint_tokenizer(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    untrained = VideoTokenizer().eval()
    shapes = MovingShapes(8, seed=1000)
    x = torch.stack([shapes[i]["video"] for i in range(8)])
    with torch.no_grad():
        before = psnr(untrained.detokenize(untrained.tokenize(x)), x).mean()
        after = psnr(trained.detokenize(trained.tokenize(x)), x).mean()
    assert after > before + 3.0


def test_chroma_loss_ignores_grey_shifts_and_sees_hue():
    from mmgen.tokenizer.module import chroma_mse

    x = torch.rand(2, 3, 5, 8, 8) * 1.6 - 0.8
    assert chroma_mse(x + 0.2, x) < 1e-12          # same hue, brighter: no chroma error
    assert chroma_mse(x[:, [1, 2, 0]], x) > 0.01    # channels rotated: hue changed


def test_object_loss_counts_object_pixels_and_their_ring_only():
    from mmgen.tokenizer.module import object_mse

    x = torch.full((1, 3, 1, 16, 16), -1.0)
    x[..., 4:8, 4:8] = 0.8                          # a bright 4x4 object on black
    far = x.clone()
    far[..., 12:, 12:] = 0.5                        # error far from the object: not counted
    assert object_mse(far, x) == 0
    corner = x.clone()
    corner[..., 4, 4] = -1.0                        # one object pixel lost (a rounded corner)
    # the error averaged over the 6x6 object+ring pixels, not over the whole frame
    assert torch.isclose(object_mse(corner, x), torch.tensor(1.8 ** 2 / 36))
    ring = x.clone()
    ring[..., 3, 4] = 0.8                           # the object bleeds one pixel out: counted too
    assert object_mse(ring, x) > 0
    assert object_mse(x, torch.full_like(x, -1.0)) == 0  # no object in the target: zero, not NaN


def test_init_from_trains_in_training_mode(tmp_path):
    tok = VideoTokenizer(**TINY)
    tok.save_pretrained(tmp_path / "tok")
    module = TokenizerModule(tokenizer=TINY, init_from=str(tmp_path / "tok"))
    # from_pretrained gives eval mode; the quantizer only tracks code magnitudes in training mode
    assert module.tokenizer.training and module.tokenizer.quantizer.training
    assert all(torch.equal(a, b) for a, b in zip(module.tokenizer.state_dict().values(), tok.state_dict().values()))
