"""mmgen.nn.pretrained: our save/load mixin reads the folders diffusers wrote and round-trips its own."""
import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmgen.ar.model import VideoAR
from mmgen.mllm.model import TinyLlava
from mmgen.mllm.tokensr import TokenSRBank
from mmgen.nn.pretrained import CONFIG_NAME, WEIGHTS_NAME
from mmgen.tokenizer.model import VideoTokenizer

ROOT = Path(__file__).resolve().parents[1] / "mmgen"
SHIPPED = [(VideoAR, ROOT / "assets/default/transformer"), (VideoTokenizer, ROOT / "assets/default/tokenizer"),
           (TinyLlava, ROOT / "mllm/assets/vqa"), (TokenSRBank, ROOT / "mllm/assets/tokensr")]


def tiny_ar(**kw):
    torch.manual_seed(0)
    shape = dict(bits=4, scales=[(1, 1), (2, 2)], num_frames=2, width=32, depth=2, heads=2, max_text_len=8)
    return VideoAR(**{**shape, **kw})


@pytest.mark.parametrize("cls,folder", SHIPPED, ids=lambda x: getattr(x, "__name__", ""))
def test_shipped_folders_written_by_diffusers_load_unchanged(cls, folder):
    model = cls.from_pretrained(folder)
    assert not model.training
    saved = load_file(str(folder / WEIGHTS_NAME))
    for gate in [k for k in saved if k.endswith("gate_proj.weight")]:  # saved before the fused SwiGLU projection
        up = gate.replace("gate_proj", "up_proj")
        saved[gate.replace("gate_proj", "gate_up_proj")] = torch.cat([saved.pop(gate), saved.pop(up)])
    state = model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    raw = json.loads((folder / CONFIG_NAME).read_text())
    for k, v in model.config.items():
        if not k.startswith("_") and k in raw:
            assert json.loads(json.dumps(v)) == raw[k], k


def test_round_trip_keeps_config_weights_and_outputs(tmp_path):
    model = tiny_ar(frame_window=1).eval()
    model.register_to_config(train_captions=["a red circle"])  # a field set after construction
    model.save_pretrained(tmp_path / "m")
    raw = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    assert raw["_class_name"] == "VideoAR" and raw["frame_window"] == 1 and raw["train_captions"] == ["a red circle"]
    assert "attn_backend" not in raw  # a run-time choice, not config
    loaded = VideoAR.from_pretrained(tmp_path / "m")
    assert loaded.config.frame_window == loaded.config["frame_window"] == 1
    assert loaded.config["_name_or_path"] == str(tmp_path / "m")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cond = model.condition_tokens(["red"])
    inputs = [torch.randn(1, 2, 1, 1, 4), torch.randn(1, 2, 2, 2, 4)]
    assert torch.equal(model(cond, inputs), loaded(cond, inputs))
    # overwriting a folder replaces both files; nothing else is left behind
    loaded.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_config_is_read_only_and_survives_copies():
    model = tiny_ar()
    with pytest.raises(TypeError, match="read-only"):
        model.config["width"] = 64
    with pytest.raises(TypeError, match="read-only"):
        model.config.width = 64
    with pytest.raises(AttributeError, match="no field"):
        model.config.nonexistent
    model.register_to_config(frame_window=3)
    assert model.config.frame_window == 3
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert dict(other.config) == dict(model.config) and other.config.width == 32


def test_dtype_device_and_torch_dtype(tmp_path):
    model = tiny_ar()
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    model.save_pretrained(tmp_path / "m")
    half = VideoAR.from_pretrained(tmp_path / "m", torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.out_proj.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(tmp_path / "n", safe_serialization=False)


def test_old_configs_and_weights_still_load(tmp_path):
    """Run-time choices in an old config load quietly; an unknown field warns; gate/up weights saved
    before the fused SwiGLU projection are fused by the load hook."""
    model = tiny_ar()
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    (tmp_path / "m" / CONFIG_NAME).write_text(json.dumps({**cfg, "attn_backend": "flex", "grad_checkpointing": True,
                                                          "_diffusers_version": "0.42.1"}))
    state = load_file(str(tmp_path / "m" / WEIGHTS_NAME))
    fused = state.pop("blocks.0.mlp.gate_up_proj.weight")
    state["blocks.0.mlp.gate_proj.weight"], state["blocks.0.mlp.up_proj.weight"] = fused.chunk(2)
    save_file(state, str(tmp_path / "m" / WEIGHTS_NAME))
    loaded = VideoAR.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.blocks[0].mlp.gate_up_proj.weight, fused)
    assert loaded.blocks[0].attn.backend == "auto" and "attn_backend" not in loaded.config
    (tmp_path / "m" / CONFIG_NAME).write_text(json.dumps({**cfg, "from_the_future": 1}))
    with pytest.warns(UserWarning, match="from_the_future"):
        VideoAR.from_pretrained(tmp_path / "m")


def test_weights_that_do_not_fit_the_config_are_an_error(tmp_path):
    model = tiny_ar()
    model.save_pretrained(tmp_path / "m")
    state = load_file(str(tmp_path / "m" / WEIGHTS_NAME))
    del state["out_proj.weight"]
    save_file(state, str(tmp_path / "m" / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="missing.*out_proj.weight"):
        VideoAR.from_pretrained(tmp_path / "m")
    TokenSRBank(dim=32).save_pretrained(tmp_path / "wide")
    TokenSRBank(dim=16).save_pretrained(tmp_path / "narrow")
    (tmp_path / "wide" / CONFIG_NAME).write_text((tmp_path / "narrow" / CONFIG_NAME).read_text())
    with pytest.raises(ValueError, match="does not fit.*size mismatch"):
        TokenSRBank.from_pretrained(tmp_path / "wide")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        VideoAR.from_pretrained(tmp_path / "nothing")
