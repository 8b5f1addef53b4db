"""Training data for VideoAR: a DataModule over any video dataset, and a pre-tokenized latent cache.

Video datasets yield ``{"video": float [C, T, H, W] in [-1, 1], "caption": str, "label": int}``
(MovingShapes, UCF-101, ...); the Lightning module encodes them with the frozen tokenizer.
Encoding is the expensive part of a step for small generators, so ``mmgen ar tokenize``
(:func:`tokenize_dataset`) can write the continuous latents once:

    CACHE/meta.json                 {"num_samples", "latent_shape", "tokenizer": config, "shards": [...],
                                     "tokenizer_sha256": the encoder's weights (io.digest.tensors_sha256)}
    CACHE/shard-00000.safetensors   "latent" float16 [N, d, t, h, w], "label" int64 [N]
    CACHE/captions.jsonl            one JSON string per sample, in order
    CACHE/text-<sha12>-<L>.safetensors  optional: a frozen text encoder's prefix states of the unique
                                    captions ("hidden" float16 [U, L, dim]; "captions" in its metadata),
                                    written by the first fit that needs them (ARModule.on_fit_start)

Latents (not codes) are stored so that Cross-Frame Error Correction can re-quantise them, and so
that a unified model whose understanding rows read the continuous latent (generator
``understand_input="latent"``, :meth:`mmgen.ar.model.VideoAR.latent_inputs`) trains from the same
cache: the codes of both readings are derived from it on the fly.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmgen.io import atomic_path
from mmgen.io.digest import tensors_sha256

log = logging.getLogger(__name__)


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


@torch.no_grad()
def tokenize_dataset(dataset: Dataset, tokenizer, out_dir: str | Path, batch_size: int = 8,
                     shard_size: int = 1024, device: str = "cpu", num_workers: int = 0) -> Path:
    """Encode every sample of ``dataset`` with ``tokenizer`` and write a latent cache to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    shards, captions, lat, lab, shape, n = [], [], [], [], None, 0

    def flush():
        if not lat:
            return
        name = f"shard-{len(shards):05d}.safetensors"
        tensors = {"latent": torch.cat(lat).contiguous(), "label": torch.cat(lab).contiguous()}
        _atomic_write(out / name, lambda tmp: save_file(tensors, tmp))
        shards.append(name)
        lat.clear()
        lab.clear()

    for batch in tqdm(loader, desc="tokenize", unit="batch"):
        z = tokenizer.encode(batch["video"].to(device).float()).half().cpu()
        shape = list(z.shape[1:])
        lat.append(z)
        lab.append(torch.as_tensor(batch.get("label", torch.full((z.shape[0],), -1))).long())
        captions += list(batch.get("caption", [""] * z.shape[0]))
        n += z.shape[0]
        if sum(x.shape[0] for x in lat) >= shard_size:
            flush()
    flush()
    if n == 0:
        raise ValueError("tokenize: the dataset is empty")
    _atomic_write(out / "captions.jsonl",
                  lambda tmp: Path(tmp).write_text("".join(json.dumps(c) + "\n" for c in captions)))
    meta = {"num_samples": n, "latent_shape": shape, "tokenizer": dict(tokenizer.config), "shards": shards,
            "tokenizer_sha256": tensors_sha256(tokenizer.state_dict())}
    _atomic_write(out / "meta.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    return out


class LatentCache(Dataset):
    """Dataset over a cache written by :func:`tokenize_dataset`: {"latent", "caption", "label"}.

    latent_frames: keep only the first n latent frames of each clip (a curriculum's short-clip
    stage; with a causal tokenizer they are exactly the latents of the first 1 + 4(n-1) frames,
    and n = 1 is the clip's first frame as an image).
    """

    def __init__(self, path: str, latent_frames: int | None = None):
        root = Path(path)
        meta_file = root / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"latent cache {root}: no meta.json; write one with `mmgen ar tokenize`")
        self.meta = json.loads(meta_file.read_text())
        latents, labels = [], []
        for name in self.meta["shards"]:
            shard = load_file(str(root / name))
            latents.append(shard["latent"])
            labels.append(shard["label"])
        self.latents, self.labels = torch.cat(latents), torch.cat(labels)
        if latent_frames is not None:
            if not 1 <= latent_frames <= self.latents.shape[2]:
                raise ValueError(f"latent_frames={latent_frames}: the cache {root} holds 1..{self.latents.shape[2]}")
            self.latents = self.latents[:, :, :latent_frames]
        self.captions = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
        if not (len(self.latents) == len(self.labels) == len(self.captions) == self.meta["num_samples"]):
            raise ValueError(f"latent cache {root} is inconsistent: {len(self.latents)} latents, "
                             f"{len(self.captions)} captions, meta says {self.meta['num_samples']}")

        self.root = root

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse a tokenizer other than the one that wrote the cache: its codes and decoder would
        not match the latents, and the trained generator would draw noise."""
        recorded = self.meta.get("tokenizer_sha256")
        if recorded is None:
            log.warning("latent cache %s predates tokenizer fingerprints: cannot check that the model's "
                        "tokenizer wrote it (re-tokenize with `mmgen ar tokenize` to have it checked)", self.root)
            return
        actual = tensors_sha256(tokenizer.state_dict())
        if actual != recorded:
            raise ValueError(f"latent cache {self.root} was written by another tokenizer (weights sha256 "
                             f"{recorded[:12]}, the model's {actual[:12]}): pass the tokenizer folder that wrote "
                             f"it (--model.tokenizer), or re-tokenize with `mmgen ar tokenize`")

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"latent": self.latents[i].float(), "caption": self.captions[i], "label": int(self.labels[i])}

    def _text_file(self, encoder_sha256: str, max_len: int) -> Path:
        return self.root / f"text-{encoder_sha256[:12]}-{max_len}.safetensors"

    def load_text_encodings(self, encoder_sha256: str, max_len: int) -> tuple[list[str], torch.Tensor] | None:
        """(unique captions, float16 [U, max_len, dim]) stored for this encoder, or None."""
        path = self._text_file(encoder_sha256, max_len)
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            captions = json.loads(f.metadata()["captions"])
            return captions, f.get_tensor("hidden")

    def save_text_encodings(self, encoder_sha256: str, max_len: int, captions: list[str], hidden: torch.Tensor) -> None:
        tensors = {"hidden": hidden.half().contiguous()}
        _atomic_write(self._text_file(encoder_sha256, max_len),
                      lambda tmp: save_file(tensors, tmp, metadata={"captions": json.dumps(captions)}))


class ARDataModule(pl.LightningDataModule):
    """Loaders for AR training.  ``train``/``val`` are any datasets yielding the dicts above
    (in YAML: ``class_path`` + ``init_args``, e.g. mmgen.data.MovingShapes or mmgen.data.latents.LatentCache)."""

    def __init__(self, train: Dataset, val: Dataset | None = None, batch_size: int = 8, num_workers: int = 0):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)
