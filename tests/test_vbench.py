"""VBench registry and aggregation, temporal flickering, subject consistency (DINO layout)."""
import json

import numpy as np
import pytest
import torch

from mmgen.metrics.dino import DinoViT, dino_from_state_dict, resolve_dino_path
from mmgen.metrics.vbench import (
    DIMENSIONS,
    SubjectConsistency,
    TemporalFlickering,
    aggregate,
    dino_preprocess,
    evaluate_dimensions,
    load_vbench_results,
    temporal_flickering_video,
)


def test_registry_has_the_16_dimensions_in_two_categories():
    assert len(DIMENSIONS) == 16 and len({d.name for d in DIMENSIONS}) == 16
    quality = [d for d in DIMENSIONS if d.category == "quality"]
    semantic = [d for d in DIMENSIONS if d.category == "semantic"]
    assert len(quality) == 7 and len(semantic) == 9
    assert sum(d.weight for d in quality) == 6.5
    assert sum(d.weight for d in semantic) == 9


# A raw score per dimension, and the aggregation written out by hand from VBench's
# normalisation table (Min, Max) and weights (dynamic degree 0.5).
RAW = {
    "subject consistency": 0.95, "background consistency": 0.96, "temporal flickering": 0.97,
    "motion smoothness": 0.98, "dynamic degree": 0.5, "aesthetic quality": 0.6, "imaging quality": 0.65,
    "object class": 0.8, "multiple objects": 0.4, "human action": 0.9, "color": 0.85,
    "spatial relationship": 0.5, "scene": 0.4, "appearance style": 0.2, "temporal style": 0.25,
    "overall consistency": 0.27,
}


def test_aggregation_matches_vbench_formula_by_hand():
    quality = (
        (0.95 - 0.1462) / (1 - 0.1462) + (0.96 - 0.2615) / (1 - 0.2615) + (0.97 - 0.6293) / (1 - 0.6293)
        + (0.98 - 0.706) / (0.9975 - 0.706) + 0.5 * 0.5 + 0.6 + 0.65
    ) / 6.5
    semantic = (
        0.8 + 0.4 + 0.9 + 0.85 + 0.5 + 0.4 / 0.8222 + (0.2 - 0.0009) / (0.2855 - 0.0009) + 0.25 / 0.364
        + 0.27 / 0.364
    ) / 9
    result = aggregate(RAW)
    assert result["quality"] == pytest.approx(quality, rel=1e-12)
    assert result["semantic"] == pytest.approx(semantic, rel=1e-12)
    assert result["total"] == pytest.approx((4 * quality + semantic) / 5, rel=1e-12)
    assert result["normalized"]["dynamic_degree"] == pytest.approx(0.25)


def test_aggregation_extremes_and_missing_dimensions():
    top = aggregate({d.name: d.max for d in DIMENSIONS})
    bottom = aggregate({d.name: d.min for d in DIMENSIONS})
    assert (top["quality"], top["semantic"], top["total"]) == pytest.approx((1.0, 1.0, 1.0))
    assert (bottom["quality"], bottom["semantic"], bottom["total"]) == pytest.approx((0.0, 0.0, 0.0))
    partial = aggregate({"temporal_flickering": 0.99})
    assert partial["quality"] is None and partial["total"] is None
    assert "subject_consistency" in partial["quality_missing"] and len(partial["semantic_missing"]) == 9
    with pytest.raises(ValueError, match="divide percentages by 100"):
        aggregate({"color": 85.2})
    with pytest.raises(ValueError, match="unknown VBench dimension 'sharpness'"):
        aggregate({"sharpness": 0.5})


def test_vbench_result_file_is_read(tmp_path):
    path = tmp_path / "results_eval_results.json"
    path.write_text(json.dumps({"subject_consistency": [0.97, [{"video_path": "a.mp4", "video_results": 0.97}]],
                                "color": 0.8}))
    assert load_vbench_results(path) == {"subject_consistency": 0.97, "color": 0.8}
    path.write_text(json.dumps({"color": "high"}))
    with pytest.raises(ValueError, match="'color' has no numeric score"):
        load_vbench_results(path)


def test_temporal_flickering_formula():
    static = torch.full((5, 8, 8, 3), 77, dtype=torch.uint8)
    assert temporal_flickering_video(static) == 1.0
    alternating = torch.zeros(4, 8, 8, 3, dtype=torch.uint8)
    alternating[1::2] = 255
    assert temporal_flickering_video(alternating) == 0.0
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (6, 10, 12, 3), dtype=np.uint8)
    # VBench: per consecutive pair the mean absolute difference, then the mean over pairs.
    per_pair = [np.mean(np.abs(video[i].astype(np.float32) - video[i + 1].astype(np.float32))) for i in range(5)]
    expected = (255.0 - np.mean(per_pair)) / 255.0
    assert temporal_flickering_video(torch.from_numpy(video)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 frames"):
        temporal_flickering_video(static[:1])


def test_dino_layout_matches_the_official_backbone_keys():
    model = DinoViT()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["cls_token"] == (1, 1, 768) and shapes["pos_embed"] == (1, 197, 768)
    assert shapes["patch_embed.proj.weight"] == (768, 3, 16, 16)
    assert shapes["blocks.11.attn.qkv.weight"] == (2304, 768) and shapes["blocks.11.attn.qkv.bias"] == (2304,)
    assert shapes["blocks.0.mlp.fc1.weight"] == (3072, 768) and shapes["norm.weight"] == (768,)
    per_block = {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                 "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                 "mlp.fc2.weight", "mlp.fc2.bias"}
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                "norm.bias"} | {f"blocks.{i}.{k}" for i in range(12) for k in per_block}
    assert set(shapes) == expected
    # A DINO training checkpoint's teacher (prefixed, with a projection head) loads too.
    teacher = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.zeros(2048, 768)
    loaded = dino_from_state_dict({"teacher": teacher})
    torch.testing.assert_close(loaded.pos_embed, model.pos_embed)


def test_dino_missing_weights_error(monkeypatch, tmp_path):
    monkeypatch.delenv("MMGEN_DINO_PATH", raising=False)
    with pytest.raises(FileNotFoundError, match="dino_vitbase16_pretrain.pth.*dl.fbaipublicfiles.com"):
        resolve_dino_path(None)
    with pytest.raises(FileNotFoundError, match="not found.*x.pth"):
        resolve_dino_path(tmp_path / "x.pth")


def _tiny_vit():
    torch.manual_seed(0)
    return DinoViT(patch_size=16, dim=32, depth=2, heads=4, train_size=224)


def test_dino_preprocess_resizes_shorter_side_without_crop():
    frames = torch.randint(0, 256, (2, 48, 64, 3), dtype=torch.uint8)
    x = dino_preprocess(frames)
    assert x.shape == (2, 3, 224, 298)
    gray = dino_preprocess(torch.full((1, 224, 224, 3), 124, dtype=torch.uint8))
    torch.testing.assert_close(gray[0, :, 0, 0], (124 / 255 - torch.tensor([0.485, 0.456, 0.406]))
                               / torch.tensor([0.229, 0.224, 0.225]))


def test_subject_consistency_logic_on_random_weights():
    scorer = SubjectConsistency(_tiny_vit())
    still = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8).repeat(4, 1, 1, 1)
    total, count = scorer.score_video(still)
    assert count == 3 and total / count == pytest.approx(1.0, abs=1e-5)

    video = torch.randint(0, 256, (5, 32, 48, 3), dtype=torch.uint8)  # non-square: interpolated positions
    total, count = scorer.score_video(video)
    f = scorer.frame_features(video)
    manual = [(max(0.0, float(f[t] @ f[t - 1])) + max(0.0, float(f[t] @ f[0]))) / 2 for t in range(1, 5)]
    assert count == 4 and total == pytest.approx(sum(manual), rel=1e-5)
    assert 0.0 <= total / count <= 1.0


def test_evaluate_dimensions_averages_frames_over_all_videos():
    # VBench divides the sum over every frame of every video by the frame count
    # (subject consistency) and averages per-video scores (temporal flickering).
    scorer = SubjectConsistency(_tiny_vit())
    a = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    b = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    results = evaluate_dimensions([("a", a), ("b", b)], [scorer, TemporalFlickering()])
    (sa, na), (sb, nb) = scorer.score_video(a), scorer.score_video(b)
    assert results["subject_consistency"]["score"] == pytest.approx((sa + sb) / (na + nb), rel=1e-6)
    flicker = (temporal_flickering_video(a) + temporal_flickering_video(b)) / 2
    assert results["temporal_flickering"]["score"] == pytest.approx(flicker, rel=1e-9)
    assert [v["video"] for v in results["temporal_flickering"]["videos"]] == ["a", "b"]


def test_every_preset_file_loads():
    from mmgen.metrics.protocols import eval_dir
    from mmgen.metrics.vbench import load_preset

    presets = sorted((eval_dir() / "vbench").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"all", "mmgen_supported", "no_weights"}
    for path in presets:
        assert load_preset(path.stem)
    assert len(load_preset("all")) == 16
