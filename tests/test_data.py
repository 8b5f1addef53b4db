"""mmgen.data: MovingShapes ground truth, clip sampling, folder/UCF-101 datasets and bad files."""
import importlib.util
import json
import logging
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmgen.data import (
    COLORS,
    MOTIONS,
    SHAPES,
    SIZES,
    UCF101,
    ClipConfig,
    EmptyDatasetError,
    MovingShapes,
    ObjectSpec,
    ShortVideoError,
    VideoFolder,
    caption_of,
    class_id,
    class_names,
    clip_indices,
    parse_caption,
    resize_crop,
    to_model_range,
    to_uint8,
)
from mmgen.data.moving_shapes import TEXTURE_MAX
from mmgen.data.ucf101 import class_caption
from mmgen.io import write_video

# Folder, UCF-101 and DataModule tests write their videos with PyAV.
needs_av = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV not installed")

# ---------------------------------------------------------------- MovingShapes


def test_vocabulary_is_the_agreed_one():
    assert list(COLORS) == ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "orange"]
    assert COLORS["red"] == (230, 30, 30) and COLORS["orange"] == (245, 140, 25)
    assert SHAPES == ("circle", "square", "triangle", "diamond")
    assert SIZES == ("small", "large")
    assert MOTIONS == ("left", "right", "up", "down", "static", "bounce")
    names = class_names()
    assert len(names) == 8 * 4 * 6 == len(set(names))
    assert names[0] == "red circle left" and names[-1] == "orange diamond bounce"
    assert names[class_id("blue", "triangle", "up")] == "blue triangle up"


def test_caption_grammar_round_trip():
    one = [ObjectSpec("circle", "red", "small", "right")]
    assert caption_of(one) == "a small red circle moving right"
    two = one + [ObjectSpec("diamond", "white", "large", "static")]
    assert caption_of(two) == "a small red circle moving right and a large white diamond staying still"
    assert parse_caption(caption_of(two)) == two
    assert parse_caption("a large cyan square bouncing") == [ObjectSpec("square", "cyan", "large", "bounce")]
    for bad in ["a red circle moving right", "a small purple circle moving right", "a small red circle",
                "a small red circle moving right and", "x and y and z", ""]:
        with pytest.raises(ValueError):
            parse_caption(bad)
    with pytest.raises(ValueError, match="shape"):
        ObjectSpec("hexagon", "red", "small", "left")


def test_sample_is_deterministic_and_seed_dependent():
    a, b = MovingShapes(8, seed=5), MovingShapes(8, seed=5)
    for i in range(8):
        sa, sb = a.sample(i), b.sample(i)
        assert torch.equal(sa.frames, sb.frames) and sa.caption == sb.caption
    c = MovingShapes(8, seed=6)
    assert any(a.sample(i).caption != c.sample(i).caption for i in range(8))
    with pytest.raises(IndexError):
        a.sample(8)


def test_getitem_layout_and_default_collate():
    ds = MovingShapes(4, size=32, num_frames=9)
    item = ds[0]
    assert item["video"].shape == (3, 9, 32, 32) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    assert torch.equal(to_uint8(item["video"]), ds.sample(0).frames)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["video"].shape == (4, 3, 9, 32, 32)
    assert batch["label"].dtype == torch.int64 and len(batch["caption"]) == 4


@pytest.mark.parametrize("background", ["plain", "textured"])
def test_ground_truth_matches_the_pixels(background):
    ds = MovingShapes(40, size=64, num_frames=17, seed=1, background=background)
    for i in range(len(ds)):
        s = ds.sample(i)
        frames = s.frames.numpy()
        specs = parse_caption(s.caption)
        assert [(o["shape"], o["color"], o["size"], o["motion"]) for o in s.objects] == [
            (p.shape, p.color, p.size, p.motion) for p in specs
        ]
        assert s.label == class_id(specs[0].color, specs[0].shape, specs[0].motion)
        assert len({o["color"] for o in s.objects}) == len(s.objects)  # colours identify objects
        for obj in s.objects:
            assert len(obj["centroid"]) == len(obj["bbox"]) == 17
            for t in (0, 8, 16):
                x0, y0, x1, y1 = obj["bbox"][t]
                assert 0 <= x0 <= x1 <= 63 and 0 <= y0 <= y1 <= 63  # fully inside the frame
                mask = (frames[t] == COLORS[obj["color"]]).all(-1)
                ys, xs = np.nonzero(mask)
                # Objects never overlap, so the colour mask is exactly the object.
                assert [xs.mean(), ys.mean()] == pytest.approx(obj["centroid"][t], abs=1e-6)
                assert [xs.min(), ys.min(), xs.max(), ys.max()] == [x0, y0, x1, y1]
                side = max(x1 - x0, y1 - y0) + 1
                expected = 64 / 6 if obj["size"] == "small" else 64 / 3
                assert abs(side - expected) <= 2.5


def test_motions_are_clearly_visible():
    ds = MovingShapes(300, size=64, num_frames=17, seed=2, max_objects=1)
    seen = set()
    for i in range(len(ds)):
        obj = ds.sample(i).objects[0]
        (xa, ya), (xb, yb) = obj["centroid"][0], obj["centroid"][-1]
        dx, dy = xb - xa, yb - ya
        motion = obj["motion"]
        seen.add(motion)
        if motion == "right":
            assert dx >= 28 and abs(dy) < 1
        elif motion == "left":
            assert dx <= -28 and abs(dy) < 1
        elif motion == "down":
            assert dy >= 28 and abs(dx) < 1
        elif motion == "up":
            assert dy <= -28 and abs(dx) < 1
        elif motion == "static":
            assert obj["centroid"][0] == obj["centroid"][-1] == obj["centroid"][8]
        else:  # bounce: diagonal, both axes move between consecutive frames
            steps = np.abs(np.diff(np.array(obj["centroid"]), axis=0))
            assert (steps[:, 0] > 0.5).mean() > 0.8 and (steps[:, 1] > 0.5).mean() > 0.8
    assert seen == set(MOTIONS)


def test_bounce_reflects_inside_the_frame():
    ds = MovingShapes(200, size=64, num_frames=40, seed=3, max_objects=1)
    reflected = 0
    for i in range(len(ds)):
        obj = ds.sample(i).objects[0]
        if obj["motion"] != "bounce":
            continue
        xs = np.array(obj["centroid"])[:, 0]
        assert np.array(obj["bbox"]).min() >= 0 and np.array(obj["bbox"]).max() <= 63
        reflected += np.any(np.diff(np.sign(np.diff(xs))) != 0)
    assert reflected > 0  # 40 frames is long enough to hit a wall


def test_wrap_edges_keep_axis_motions_going_across_the_frame():
    """edges="wrap": a left/right/up/down object moves at the same speed every frame on a torus and is
    drawn whole while split across an edge (not clipped); the other motions stay inside as before."""
    from mmgen.data.moving_shapes import SIZE_FRACTION

    ds = MovingShapes(200, size=64, num_frames=33, seed=6, max_objects=1, edges="wrap")
    step = 0.5 * 64 / 32  # TRAVEL of the side over the clip
    split_seen = 0
    for i in range(len(ds)):
        s = ds.sample(i)
        obj = s.objects[0]
        track = np.array(obj["centroid"])
        if obj["motion"] in ("static", "bounce"):
            assert np.array(obj["bbox"]).min() >= 0 and np.array(obj["bbox"]).max() <= 63
            continue
        axis = 0 if obj["motion"] in ("left", "right") else 1
        sign = 1 if obj["motion"] in ("right", "down") else -1
        forward = np.mod(sign * np.diff(track[:, axis]) + 32, 64) - 32  # the shorter way round
        assert forward == pytest.approx(np.full(32, step), abs=0.6)  # rasterised centroids: within a pixel
        assert np.ptp(track[:, 1 - axis]) < 1
        masks = (s.frames.numpy() == COLORS[obj["color"]]).all(-1)
        areas = masks.reshape(33, -1).sum(1)
        edge = masks[:, :, 0].any(1) & masks[:, :, -1].any(1) if axis == 0 else masks[:, 0].any(1) & masks[:, -1].any(1)
        split_seen += edge.sum()
        full = (2 * SIZE_FRACTION[obj["size"]] * 32) ** 2
        assert areas.min() > 0.3 * full and areas.max() / areas.min() < 1.25  # whole in every frame
    assert split_seen > 0


def test_mixed_edges_draw_each_clip_inside_or_on_the_torus():
    kinds = set()
    for i in range(24):
        clip = MovingShapes(24, seed=5, edges="mixed").sample(i).frames
        inside = torch.equal(clip, MovingShapes(24, seed=5).sample(i).frames)
        wrap = torch.equal(clip, MovingShapes(24, seed=5, edges="wrap").sample(i).frames)
        assert inside or wrap
        kinds.add((inside, wrap))
    assert {(True, False), (False, True)} <= kinds  # both kinds occur (clips without axis motion are both)
    with pytest.raises(ValueError, match=r"edges='torus' is not one of"):
        MovingShapes(4, edges="torus")


def test_boxes_overlap_on_a_torus():
    from mmgen.data.moving_shapes import _boxes_overlap

    a = np.array([[58.0, 10.0, 66.0, 18.0]])  # crosses the right edge of a 64-pixel frame
    b = np.array([[0.0, 12.0, 6.0, 20.0]])   # touches the left edge, where a's overhang lands
    assert not _boxes_overlap(a, b)
    assert _boxes_overlap(a, b, period=64)
    assert not _boxes_overlap(a, b + np.array([20.0, 0.0, 20.0, 0.0]), period=64)


def test_textured_background_is_dark_and_grey():
    s = MovingShapes(1, background="textured", seed=4).sample(0)
    frames = s.frames.numpy().astype(int)
    background = np.ones(frames.shape[:3], bool)
    for obj in s.objects:
        background &= ~(frames == COLORS[obj["color"]]).all(-1)
    pixels = frames[background]
    assert pixels.max() < TEXTURE_MAX
    assert (pixels.max(-1) - pixels.min(-1)).max() <= 32  # low saturation
    assert pixels.std() > 3  # really textured
    both = background[0] & background[-1]
    assert (frames[0][both] == frames[-1][both]).all()  # static


def test_holdout_splits():
    holdout = [("red", "circle"), ("blue", "square")]
    train = MovingShapes(200, holdout=holdout, split="train", seed=0)
    heldout = MovingShapes(50, holdout=holdout, split="heldout", seed=0)
    for i in range(len(train)):
        assert all((o["color"], o["shape"]) not in holdout for o in train.sample(i).objects)
    first = {(heldout.sample(i).objects[0]["color"], heldout.sample(i).objects[0]["shape"]) for i in range(50)}
    assert first == set(holdout)
    with pytest.raises(ValueError, match="holdout"):
        MovingShapes(4, split="heldout")
    with pytest.raises(ValueError, match="holdout pair"):
        MovingShapes(4, holdout=[("purple", "circle")])
    with pytest.raises(ValueError, match="max_objects"):
        MovingShapes(4, max_objects=3)


# ---------------------------------------------------------------- clip sampling


def test_clip_indices_crop_stride_and_short_policy():
    cfg = ClipConfig(num_frames=4, stride=2, temporal_crop="centre")
    assert cfg.span == 7
    assert clip_indices(11, cfg) == ([2, 4, 6, 8], False)
    rng = random.Random(0)
    starts = set()
    for _ in range(50):
        idx, padded = clip_indices(11, ClipConfig(4, 2, "random"), rng)
        assert not padded and np.all(np.diff(idx) == 2) and 0 <= idx[0] and idx[-1] <= 10
        starts.add(idx[0])
    assert starts == {0, 1, 2, 3, 4}
    assert clip_indices(5, cfg) == ([0, 2, 4, 4], True)  # padded by repeating the last frame
    with pytest.raises(ShortVideoError):
        clip_indices(5, ClipConfig(4, 2, short="skip"))
    with pytest.raises(ValueError, match="temporal_crop"):
        ClipConfig(temporal_crop="middle")
    assert ClipConfig(temporal_crop="center").temporal_crop == "centre"


def test_resize_crop_keeps_aspect_and_centres():
    video = torch.zeros(2, 40, 80, 3, dtype=torch.uint8)
    video[:, :, 30:50] = 255  # a vertical bar in the middle
    out = resize_crop(video, (20, 20))
    assert out.shape == (2, 20, 20, 3)
    # 40x80 -> 20x40, centre 20 columns = source columns 20..60: the bar covers the middle half.
    assert out[0, 10, 10, 0] == 255 and out[0, 10, 1, 0] == 0
    x = to_model_range(video)
    assert x.shape == (3, 2, 40, 80) and x.min() == -1 and x.max() == 1


# ---------------------------------------------------------------- video folders


def tiny_video(path, num_frames=8, size=32, value=None, seed=0):
    frames = MovingShapes(1, size=size, num_frames=num_frames, seed=seed).sample(0).frames
    if value is not None:
        frames = torch.full_like(frames, value)
    write_video(path, frames, fps=8)
    return frames


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for cls in ("cats", "dogs"):
        (root / cls).mkdir()
        for k in range(2):
            tiny_video(root / cls / f"{cls}{k}.mp4", seed=k)
    (root / "dogs" / "dogs0.txt").write_text("a dog running\n")
    (root / "cats" / "notes.txt").write_text("not a video")
    return root


@needs_av
def test_video_folder_labels_and_sidecar_captions(folder):
    ds = VideoFolder(folder, clip=ClipConfig(num_frames=4, resolution=16))
    assert ds.classes == ["cats", "dogs"] and len(ds) == 4
    by_name = {item.path.split("/")[-1]: item for item in ds.items}
    assert by_name["cats0.mp4"].label == 0 and by_name["dogs1.mp4"].label == 1
    assert by_name["dogs0.mp4"].caption == "a dog running" and by_name["cats0.mp4"].caption == ""
    item = ds[0]
    assert item["video"].shape == (3, 4, 16, 16) and -1 <= item["video"].min() <= item["video"].max() <= 1


@needs_av
@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_video_folder_manifest_captions(tmp_path, kind):
    for k in range(2):
        tiny_video(tmp_path / f"{k}.mp4", seed=k)
    if kind == "jsonl":
        rows = [{"file": "0.mp4", "caption": "first", "label": 7}, {"file": "1.mp4", "caption": "second"}]
        (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        (tmp_path / "manifest.csv").write_text("path,text,label\n0.mp4,first,7\n1.mp4,second,\n")
    ds = VideoFolder(tmp_path, clip=ClipConfig(num_frames=4, resolution=16))
    assert [(i.caption, i.label) for i in ds.items] == [("first", 7), ("second", -1)]


@needs_av
def test_malformed_manifest_names_file_and_line(tmp_path):
    tiny_video(tmp_path / "0.mp4")
    (tmp_path / "manifest.jsonl").write_text('{"file": "0.mp4", "caption": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match=r"manifest.jsonl:2"):
        VideoFolder(tmp_path)
    (tmp_path / "manifest.jsonl").write_text('{"caption": "no file"}\n')
    with pytest.raises(ValueError, match="no 'file'"):
        VideoFolder(tmp_path)


def make_bad_files(root, good_clip_path):
    (root / "zero.mp4").touch()
    (root / "text.avi").write_text("hello, I am not a video")
    data = good_clip_path.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    noise = bytes(range(256)) * (len(data) // 768 + 1)
    (root / "corrupt.mkv").write_bytes(data[:48] + noise[: len(data) // 3] + data[48 + len(data) // 3 :])


@needs_av
def test_bad_files_are_skipped_counted_and_logged(tmp_path, caplog):
    for k in range(3):
        tiny_video(tmp_path / f"good{k}.mp4", seed=k)
    make_bad_files(tmp_path, tmp_path / "good0.mp4")
    ds = VideoFolder(tmp_path, clip=ClipConfig(num_frames=4, resolution=16))
    assert len(ds) == 7
    with caplog.at_level(logging.WARNING, logger="mmgen.data"):
        batches = list(DataLoader(ds, batch_size=2))
    assert sum(len(b["path"]) for b in batches) == 7  # every index served a clip
    assert all("good" in p for b in batches for p in b["path"])
    assert ds.stats == {"ok": 3, "padded": 0, "unreadable": 4, "too_short": 0}
    assert sum("unreadable" in r.message for r in caplog.records) == 4
    assert any("zero.mp4" in r.message for r in caplog.records)


@needs_av
def test_bad_file_counts_reach_the_main_process_from_workers(tmp_path):
    for k in range(2):
        tiny_video(tmp_path / f"good{k}.mp4", seed=k)
    make_bad_files(tmp_path, tmp_path / "good0.mp4")
    ds = VideoFolder(tmp_path, clip=ClipConfig(num_frames=4, resolution=16))
    batches = list(DataLoader(ds, batch_size=1, num_workers=2))
    assert len(batches) == 6
    assert ds.stats["unreadable"] == 4 and ds.stats["ok"] == 2


@needs_av
def test_empty_and_all_bad_folders_name_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no videos here")
    with pytest.raises(EmptyDatasetError, match="empty"):
        VideoFolder(empty)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        VideoFolder(tmp_path / "missing_dir")
    bad = tmp_path / "allbad"
    bad.mkdir()
    tiny_video(tmp_path / "source.mp4")
    make_bad_files(bad, tmp_path / "source.mp4")
    ds = VideoFolder(bad)
    with pytest.raises(EmptyDatasetError, match="allbad"):
        next(iter(DataLoader(ds, batch_size=2)))
    assert ds.stats["unreadable"] == 4


@needs_av
def test_short_videos_padded_or_skipped_and_counted(tmp_path):
    long = tiny_video(tmp_path / "long.mp4", num_frames=10, seed=1)
    short = tiny_video(tmp_path / "short.mp4", num_frames=3, seed=2)
    padded = VideoFolder(tmp_path, clip=ClipConfig(num_frames=6, resolution=None, short="pad", temporal_crop="centre"))
    items = [padded[i] for i in range(2)]
    assert padded.stats["padded"] == 1 and padded.stats["ok"] == 1
    short_clip = to_uint8(next(x["video"] for x in items if x["path"].endswith("short.mp4")))
    assert short_clip.shape[0] == 6
    assert torch.equal(short_clip[3:], short_clip[2:3].expand(3, -1, -1, -1))  # last frame repeated
    assert (short_clip[:3].int() - short.int()).abs().float().mean() < 3
    skipped = VideoFolder(tmp_path, clip=ClipConfig(num_frames=6, resolution=None, short="skip"))
    assert all(skipped[i]["path"].endswith("long.mp4") for i in range(2))
    assert skipped.stats["too_short"] == 1
    assert long.shape[0] == 10


# ---------------------------------------------------------------- UCF-101


def write_avi(path, seed):
    import av

    frames = MovingShapes(1, size=32, num_frames=6, seed=seed).sample(0).frames.numpy()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf")
    classes = ["ApplyEyeMakeup", "YoYo"]
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(classes)))
    train, test = [], []
    for k, cls in enumerate(classes):
        (root / "UCF-101" / cls).mkdir(parents=True)
        for g, c in [(8, 1), (9, 2), (1, 1)]:
            name = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi"
            write_avi(root / "UCF-101" / name, seed=g + c)
            (test if g == 1 else train).append((name, k + 1))
    (lists / "trainlist01.txt").write_text("".join(f"{n} {k}\n" for n, k in train))
    (lists / "testlist01.txt").write_text("".join(f"{n}\n" for n, _ in test) + "YoYo/v_YoYo_g02_c01.avi\n")
    return root


@needs_av
def test_ucf101_official_layout(ucf_root):
    clip = ClipConfig(num_frames=4, resolution=16)
    train = UCF101(ucf_root, split="train", fold=1, clip=clip)
    assert train.classes == ["ApplyEyeMakeup", "YoYo"] and len(train) == 4
    assert [i.label for i in train.items] == [0, 0, 1, 1]
    assert train.items[0].caption == "apply eye makeup"
    assert train[3]["video"].shape == (3, 4, 16, 16) and train[3]["label"] == 1
    test = UCF101(ucf_root, split="test", fold=1, clip=clip)
    assert len(test) == 2 and test.missing == 1  # the listed but absent file is counted
    also = UCF101(ucf_root / "UCF-101", annotations=ucf_root / "ucfTrainTestlist", clip=clip)
    assert len(also) == 4
    with pytest.raises(FileNotFoundError, match="trainlist02"):
        UCF101(ucf_root, fold=2)
    with pytest.raises(FileNotFoundError, match="classInd"):
        UCF101(ucf_root / "UCF-101")
    with pytest.raises(ValueError, match="fold"):
        UCF101(ucf_root, fold=4)


def test_class_caption():
    assert class_caption("ApplyEyeMakeup") == "apply eye makeup"
    assert class_caption("YoYo") == "yo yo"
    assert class_caption("PlayingDaf") == "playing daf"


# ---------------------------------------------------------------- DataModule


@needs_av
def test_datamodule_moving_shapes_and_folder(folder):
    from mmgen.data.datamodule import VideoDataModule

    dm = VideoDataModule(num_train=6, num_val=4, batch_size=3, num_frames=5, resolution=32,
                         holdout=[("red", "circle")])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (3, 3, 5, 32, 32)
    assert len(dm.val_set) == 4 and dm.heldout_set.split == "heldout"
    dm = VideoDataModule("folder", root=str(folder), val_root=str(folder), batch_size=2, num_frames=4, resolution=16)
    dm.setup("fit")
    assert next(iter(dm.val_dataloader()))["video"].shape == (2, 3, 4, 16, 16)
    assert dm.val_set.clip.temporal_crop == "centre"
    with pytest.raises(ValueError, match="root"):
        VideoDataModule("ucf101")
