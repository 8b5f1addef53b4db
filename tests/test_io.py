"""mmgen.io: reading with every backend and fallback, writing mp4/gif/grids, bad files."""
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

import mmgen.io.read as io_read
from mmgen.data import MovingShapes
from mmgen.io import (
    VideoReadError,
    available_backends,
    make_grid,
    read_video,
    video_info,
    write_grid,
    write_video,
)

av = pytest.importorskip("av")  # writing needs PyAV
needs_decord = pytest.mark.skipif("decord" not in available_backends(), reason="decord not installed")
needs_torchcodec = pytest.mark.skipif("torchcodec" not in available_backends(), reason="torchcodec not installed")


def psnr(a, b) -> float:
    mse = ((torch.as_tensor(a).double() - torch.as_tensor(b).double()) ** 2).mean()
    return float(10 * torch.log10(255.0**2 / mse))


def encode_with_pyav(path, frames: np.ndarray, codec: str, pix_fmt: str, fps: int = 8) -> None:
    """A file made by another encoder than write_video (e.g. MPEG-4 part 2 or MJPEG in AVI)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if codec == "mpeg4":
            stream.options = {"qscale": "2"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def clip():
    return MovingShapes(4, size=64, num_frames=17, seed=3).sample(0).frames


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory, clip):
    path = tmp_path_factory.mktemp("io") / "clip.mp4"
    write_video(path, clip, fps=8)
    return path


def test_round_trip_psnr_at_64x64(tmp_path):
    ds = MovingShapes(4, size=64, num_frames=17, seed=0)
    sources, decoded = [], []
    for i in range(len(ds)):
        frames = ds.sample(i).frames
        write_video(tmp_path / f"{i}.mp4", frames, fps=8)
        back = read_video(tmp_path / f"{i}.mp4")
        assert back.shape == frames.shape and back.dtype == torch.uint8
        assert psnr(back, frames) > 28.0, f"clip {i}"
        sources.append(frames)
        decoded.append(back)
    assert psnr(torch.stack(decoded), torch.stack(sources)) >= 30.0


@needs_decord
def test_decord_and_pyav_agree(clip_mp4):
    info_d, info_p = video_info(clip_mp4, backend="decord"), video_info(clip_mp4, backend="pyav")
    assert info_d.num_frames == info_p.num_frames == 17
    assert info_d.fps == pytest.approx(info_p.fps) == pytest.approx(8.0)
    assert (info_d.height, info_d.width) == (info_p.height, info_p.width) == (64, 64)
    a, b = read_video(clip_mp4, backend="decord"), read_video(clip_mp4, backend="pyav")
    assert a.shape == b.shape
    assert (a.int() - b.int()).abs().max() <= 2
    idx = [16, 0, 5, 5]
    assert torch.equal(read_video(clip_mp4, idx, backend="decord"), a[idx])
    assert torch.equal(read_video(clip_mp4, idx, backend="pyav"), b[idx])


@needs_torchcodec
def test_torchcodec_agrees_with_pyav(clip_mp4):
    a, b = read_video(clip_mp4, backend="torchcodec"), read_video(clip_mp4, backend="pyav")
    assert a.shape == b.shape and (a.int() - b.int()).abs().float().mean() < 2


@pytest.mark.parametrize(("codec", "pix_fmt"), [("mpeg4", "yuv420p"), ("mjpeg", "yuvj420p")])
def test_avi_from_another_encoder_reads(tmp_path, clip, codec, pix_fmt):
    path = tmp_path / f"other_{codec}.avi"
    encode_with_pyav(path, clip.numpy(), codec, pix_fmt)
    for backend in ["auto", *available_backends()]:
        video = read_video(path, backend=backend)
        assert video.shape == clip.shape, backend
        assert psnr(video, clip) > 22, backend
    assert video_info(path).num_frames == 17


def test_fallback_to_pyav_when_decord_fails_on_a_file(tmp_path, clip):
    # decord cannot measure GIFs: auto must fall through to a backend that can.
    path = tmp_path / "clip.gif"
    write_video(path, clip, fps=8)
    info = video_info(path)
    assert info.num_frames == 17 and info.backend == "pyav"
    assert read_video(path).shape == clip.shape


def test_fallback_when_first_backend_raises(monkeypatch, clip_mp4):
    class Broken(io_read._Reader):
        def __init__(self, path, module):
            raise RuntimeError("simulated decoder crash")

    monkeypatch.setitem(io_read._READERS, "decord", Broken)
    monkeypatch.setattr(io_read, "available_backends", lambda: ["decord", "pyav"])
    assert video_info(clip_mp4).backend == "pyav"
    assert read_video(clip_mp4).shape == (17, 64, 64, 3)


def test_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoReadError, match="not found.*nope.mp4"):
        read_video(missing)
    with pytest.raises(VideoReadError, match="nope.mp4"):
        video_info(missing)
    with pytest.raises(VideoReadError, match="not a file"):
        read_video(tmp_path)


def test_zero_byte_non_video_truncated_and_corrupt_files(tmp_path, clip_mp4):
    zero = tmp_path / "zero.mp4"
    zero.touch()
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    truncated = tmp_path / "truncated.mp4"
    data = clip_mp4.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.mp4"  # intact size and container header, garbage payload
    noise = np.random.default_rng(0).integers(0, 256, len(data) // 3, dtype=np.uint8).tobytes()
    corrupt.write_bytes(data[: len(data) // 3] + noise + data[len(data) // 3 + len(noise) :])
    for bad in (zero, text, truncated, corrupt):
        with pytest.raises(VideoReadError, match=bad.name):
            read_video(bad)
        with pytest.raises(VideoReadError, match=bad.name):
            video_info(bad)


def test_frame_selection_and_resize(clip_mp4):
    full = read_video(clip_mp4)
    assert torch.equal(read_video(clip_mp4, frames=[3, 1, 3]), full[[3, 1, 3]])
    with pytest.raises(ValueError, match="out of range"):
        read_video(clip_mp4, frames=[17])
    with pytest.raises(ValueError, match="out of range"):
        read_video(clip_mp4, frames=[-1])
    assert read_video(clip_mp4, size=32).shape == (17, 32, 32, 3)
    assert read_video(clip_mp4, size=(24, 40)).shape == (17, 24, 40, 3)
    with pytest.raises(ValueError, match="backend"):
        read_video(clip_mp4, backend="nonsense")


def test_odd_sizes_are_padded_and_content_kept(tmp_path, clip):
    odd = clip[:, :63, :61]
    path = tmp_path / "odd.mp4"
    write_video(path, odd.numpy(), fps=8)
    back = read_video(path)
    assert back.shape == (17, 64, 62, 3)
    assert psnr(back[:, :63, :61], odd) > 28


def test_gif_round_trip(tmp_path, clip):
    path = tmp_path / "clip.gif"
    write_video(path, clip, fps=8)
    back = read_video(path, backend="pyav")
    assert back.shape == clip.shape
    assert psnr(back, clip) > 25  # GIF palettes are lossy but MovingShapes has few colours


def test_write_is_atomic_and_replaces(tmp_path, clip):
    path = tmp_path / "out.mp4"
    write_video(path, clip, fps=8)
    write_video(path, clip[:5], fps=8)
    assert video_info(path).num_frames == 5
    before = path.read_bytes()
    with pytest.raises(ValueError, match="uint8"):
        write_video(path, clip.float(), fps=8)
    with pytest.raises(ValueError, match="shape"):
        write_video(path, clip[0], fps=8)
    with pytest.raises(ValueError, match="extension"):
        write_video(tmp_path / "out.avi", clip)
    assert path.read_bytes() == before  # a failed write leaves the old file
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]  # and no temporary file
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_interrupted_write_keeps_old_file(tmp_path, clip, monkeypatch):
    import mmgen.io.write as io_write

    path = tmp_path / "out.mp4"
    write_video(path, clip, fps=8)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io_write, "_write_mp4", crash)
    with pytest.raises(KeyboardInterrupt):
        write_video(path, clip[:3], fps=8)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]


def test_make_grid_layout_and_write_grid(tmp_path):
    videos = [torch.full((3 + k, 8, 10, 3), 40 * (k + 1), dtype=torch.uint8) for k in range(5)]
    grid = make_grid(videos, nrow=3, padding=2)
    assert grid.shape == (7, 2 * (8 + 2) + 2, 3 * (10 + 2) + 2, 3)
    # Video k sits at row k // 3, column k % 3; shorter videos hold their last frame.
    for k in range(5):
        y, x = 2 + (k // 3) * 10, 2 + (k % 3) * 12
        assert (grid[:, y : y + 8, x : x + 10] == 40 * (k + 1)).all()
    assert (grid[:, 0, :] == 0).all()
    write_grid(tmp_path / "grid.mp4", videos, nrow=3, fps=4)
    info = video_info(tmp_path / "grid.mp4")
    assert (info.num_frames, info.height, info.width) == (7, 22, 38)
    with pytest.raises(ValueError, match="sizes must match"):
        make_grid([videos[0], torch.zeros(3, 9, 10, 3, dtype=torch.uint8)])


def _model(tmp, weights="one"):
    (tmp / "config.json").write_text('{"_class_name": "VideoTokenizer"}')
    (tmp / "diffusion_pytorch_model.safetensors").write_text(weights)


def test_atomic_dir_replaces_a_model_folder_whole_and_keeps_it_on_failure(tmp_path):
    from mmgen.cli_utils import UserError
    from mmgen.io import atomic_dir

    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        _model(tmp)
        (tmp / "sub").mkdir()
        _model(tmp / "sub")
    assert (out / "config.json").is_file() and (out / "sub" / "config.json").is_file()
    assert (out / "config.json").stat().st_mode & 0o044  # readable by others, unlike mkdtemp's 0600

    with pytest.raises(UserError, match="--overwrite"):  # a model is there: replaced only when asked
        with atomic_dir(out) as tmp:
            _model(tmp, "two")
    with atomic_dir(out, overwrite=True) as tmp:
        _model(tmp, "two")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert (out / "diffusion_pytorch_model.safetensors").read_text() == "two"  # replaced, not merged

    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as tmp:
            _model(tmp, "half")
            raise RuntimeError("save failed")
    assert (out / "diffusion_pytorch_model.safetensors").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folders left behind


@pytest.mark.parametrize("setup", ["user_file_in_folder", "file_at_path", "model_plus_user_file"])
def test_atomic_dir_never_replaces_what_is_not_ours(tmp_path, setup):
    from mmgen.cli_utils import UserError
    from mmgen.io import atomic_dir

    out = tmp_path / "dest"
    if setup == "file_at_path":
        out.write_text("my notes")
    else:
        out.mkdir()
        if setup == "model_plus_user_file":
            _model(out)
        (out / "notes.txt").write_text("my notes")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match="choose"):
        with atomic_dir(out, overwrite=True) as tmp:
            _model(tmp)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (out.read_text() if out.is_file() else (out / "notes.txt").read_text()) == "my notes"


def test_atomic_dir_refuses_cwd_its_parents_and_the_input(tmp_path, monkeypatch):
    from mmgen.cli_utils import UserError
    from mmgen.io import atomic_dir

    work = tmp_path / "work"
    _model(work.mkdir() or work)  # even a model folder of ours: it is where the user stands
    monkeypatch.chdir(work)
    for dest in (".", str(tmp_path)):
        with pytest.raises(UserError, match="current folder"):
            with atomic_dir(dest, overwrite=True) as tmp:
                _model(tmp)
    ckpt = tmp_path / "runs" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_text("weights")
    for dest in (ckpt, ckpt.parent):
        with pytest.raises(UserError, match="input"):
            with atomic_dir(dest, overwrite=True, inputs=[ckpt]) as tmp:
                _model(tmp)
    assert ckpt.read_text() == "weights" and (work / "config.json").is_file()
