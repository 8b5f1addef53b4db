"""InceptionI3d layout (pytorch-i3d keys and shapes), TF "same" padding, weight loading."""
import pytest
import torch

from mmgen.metrics.i3d import (
    I3D_ENV,
    InceptionI3d,
    PyTorchI3D,
    TorchScriptI3D,
    Unit3D,
    WeightsFileError,
    load_i3d,
    resolve_i3d_path,
)

# The pytorch-i3d state-dict layout, written out: (unit, conv3d weight shape) for the stem,
# and for every Inception block (name, in, b0, b1a, b1b, b2a, b2b, b3b widths).
STEM = [
    ("Conv3d_1a_7x7", (64, 3, 7, 7, 7)),
    ("Conv3d_2b_1x1", (64, 64, 1, 1, 1)),
    ("Conv3d_2c_3x3", (192, 64, 3, 3, 3)),
]
MIXED = [
    ("Mixed_3b", 192, 64, 96, 128, 16, 32, 32),
    ("Mixed_3c", 256, 128, 128, 192, 32, 96, 64),
    ("Mixed_4b", 480, 192, 96, 208, 16, 48, 64),
    ("Mixed_4c", 512, 160, 112, 224, 24, 64, 64),
    ("Mixed_4d", 512, 128, 128, 256, 24, 64, 64),
    ("Mixed_4e", 512, 112, 144, 288, 32, 64, 64),
    ("Mixed_4f", 528, 256, 160, 320, 32, 128, 128),
    ("Mixed_5b", 832, 256, 160, 320, 32, 128, 128),
    ("Mixed_5c", 832, 384, 192, 384, 48, 128, 128),
]

# The reference I3D exists only as TorchScript; its deprecation warnings are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def expected_layout() -> dict[str, tuple[int, ...]]:
    units = list(STEM)
    for name, cin, b0, b1a, b1b, b2a, b2b, b3b in MIXED:
        units += [
            (f"{name}.b0", (b0, cin, 1, 1, 1)),
            (f"{name}.b1a", (b1a, cin, 1, 1, 1)),
            (f"{name}.b1b", (b1b, b1a, 3, 3, 3)),
            (f"{name}.b2a", (b2a, cin, 1, 1, 1)),
            (f"{name}.b2b", (b2b, b2a, 3, 3, 3)),
            (f"{name}.b3b", (b3b, cin, 1, 1, 1)),
        ]
    layout = {}
    for unit, shape in units:
        layout[f"{unit}.conv3d.weight"] = shape
        for stat in ("weight", "bias", "running_mean", "running_var"):
            layout[f"{unit}.bn.{stat}"] = (shape[0],)
        layout[f"{unit}.bn.num_batches_tracked"] = ()
    layout["logits.conv3d.weight"] = (400, 1024, 1, 1, 1)
    layout["logits.conv3d.bias"] = (400,)
    return layout


def test_state_dict_keys_and_shapes_match_pytorch_i3d():
    model = InceptionI3d()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_layout()
    bn = model.Conv3d_1a_7x7.bn
    assert bn.eps == 1e-3


@pytest.mark.parametrize("size,kernel,stride", [(17, 3, 2), (16, 7, 2), (9, 1, 1), (5, 3, 1)])
def test_tf_same_padding_gives_ceil_output(size, kernel, stride):
    unit = Unit3D(1, 1, kernel=(kernel,) * 3, stride=(stride,) * 3, batch_norm=False)
    out = unit(torch.zeros(1, 1, size, size, size))
    assert out.shape[2:] == (-(-size // stride),) * 3


def test_tf_same_padding_puts_the_extra_pixel_at_the_end():
    # Even input, odd kernel 3, stride 2: TF pads 0 before and 1 after. A ramp input
    # with a kernel that sums its window tells where the padding went.
    unit = Unit3D(1, 1, kernel=(1, 1, 3), stride=(1, 1, 2), batch_norm=False, activation=False)
    with torch.no_grad():
        unit.conv3d.weight.fill_(1.0)
    x = torch.arange(1.0, 5.0).view(1, 1, 1, 1, 4)  # [1, 2, 3, 4]
    assert unit(x).flatten().tolist() == [1 + 2 + 3, 3 + 4 + 0]


def test_small_forward_shapes_and_time_average():
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    x = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad():
        per_time = model(x)
        feats = model.features(x)
    assert per_time.shape == (1, 400, 1)
    assert feats.shape == (1, 400)
    torch.testing.assert_close(feats, per_time.mean(2))


def test_standard_forward_2x16x224():
    # About 7 s on 2 shared CPU cores: kept in the default suite, it is the layout's bar.
    model = InceptionI3d().eval()
    with torch.no_grad():
        feats = model.features(torch.rand(2, 3, 16, 224, 224) * 2 - 1)
    assert feats.shape == (2, 400)
    assert torch.isfinite(feats).all()


def test_state_dict_file_loads_strictly_and_fills_old_bn_counters(tmp_path):
    torch.manual_seed(0)
    source = InceptionI3d()
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(state, path)
    ext = load_i3d(path)
    assert isinstance(ext, PyTorchI3D) and ext.info.kind == "i3d_pytorch"
    assert len(ext.info.sha256) == 64
    torch.testing.assert_close(ext.model.logits.conv3d.weight, source.logits.conv3d.weight)

    state["Mixed_9z.b0.conv3d.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsFileError, match="Mixed_9z"):
        load_i3d(tmp_path / "bad.pt")


def test_pytorch_extractor_preprocess_crops_and_scales():
    ext = PyTorchI3D(None, size=32)
    videos = torch.full((1, 3, 2, 48, 64), 255, dtype=torch.uint8)
    x = ext.preprocess(videos)
    assert x.shape == (1, 3, 2, 32, 32)
    torch.testing.assert_close(x, torch.ones_like(x))
    half = PyTorchI3D(None, size=32, input_scale=0.5)  # VideoGPT's [-0.5, 0.5]
    torch.testing.assert_close(half.preprocess(torch.zeros_like(videos)), torch.full_like(x, -0.5))
    assert "[-0.5, 0.5]" in half.info.preprocess
    with pytest.raises(ValueError, match="uint8 videos"):
        ext(videos.float())


class _TinyScripted(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: same call signature, trivially checkable output."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        y = x.float()
        if rescale:
            y = y / 127.5 - 1.0
        return y.mean(dim=(2, 3, 4)).repeat(1, 2)


def test_torchscript_file_is_detected_and_called_with_reference_flags(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_TinyScripted()).save(str(path))
    ext = load_i3d(path)
    assert isinstance(ext, TorchScriptI3D) and ext.info.kind == "i3d_torchscript"
    feats = ext(torch.full((2, 3, 4, 8, 8), 255, dtype=torch.uint8))
    torch.testing.assert_close(feats, torch.ones(2, 6))  # rescale=True reached the model


def test_missing_weights_name_the_file_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(I3D_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="i3d_torchscript.pt.*dropbox.*MMGEN_I3D_PATH"):
        resolve_i3d_path(None)
    with pytest.raises(FileNotFoundError, match="nothere.pt.*--i3d"):
        resolve_i3d_path(tmp_path / "nothere.pt")
    monkeypatch.setenv(I3D_ENV, str(tmp_path / "env.pt"))
    with pytest.raises(FileNotFoundError, match="env.pt.*MMGEN_I3D_PATH"):
        resolve_i3d_path(None)
