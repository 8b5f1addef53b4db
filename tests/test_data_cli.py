"""`mmgen data synth` and `mmgen data inspect`."""
import json

import pytest

from mmgen.data import MovingShapes, parse_caption
from mmgen.data.cli import main
from mmgen.io import read_video, video_info

pytest.importorskip("av")  # synth writes mp4 with PyAV

MANIFEST_KEYS = {"file", "caption", "label", "objects", "fps", "num_frames", "size", "seed", "index"}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "shapes"
    argv = ["synth", "--out", str(out), "--num", "6", "--size", "32", "--frames", "9", "--fps", "8", "--seed", "3"]
    assert main(argv) == 0
    return out


def test_synth_writes_clips_and_manifest(synth_dir):
    rows = [json.loads(line) for line in (synth_dir / "manifest.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [f"{i:05d}.mp4" for i in range(6)]
    reference = MovingShapes(6, size=32, num_frames=9, seed=3)
    for row in rows:
        assert MANIFEST_KEYS <= set(row)
        sample = reference.sample(row["index"])
        assert row["caption"] == sample.caption and row["label"] == sample.label
        assert row["objects"] == sample.objects
        assert parse_caption(row["caption"])
        info = video_info(synth_dir / row["file"])
        assert (info.num_frames, info.height, info.width, info.fps) == (9, 32, 32, 8.0)
    assert video_info(synth_dir / "preview.gif").num_frames == 9
    first = read_video(synth_dir / rows[0]["file"])
    assert (first.int() - reference.sample(0).frames.int()).abs().float().mean() < 3


def test_synth_holdout_defaults_to_train_split(tmp_path):
    out = tmp_path / "train"
    assert main(["synth", "--out", str(out), "--num", "8", "--size", "32", "--frames", "5",
                 "--max-objects", "1", "--holdout", "red:circle,green:square"]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(r["split"] == "train" for r in rows)
    assert all((o["color"], o["shape"]) not in {("red", "circle"), ("green", "square")}
               for r in rows for o in r["objects"])


def test_synth_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path), "--holdout", "purple:circle"])
    assert "purple:circle" in capsys.readouterr().err
    from mmgen.cli import main as mmgen_main

    assert mmgen_main(["data", "synth", "--out", str(tmp_path), "--num", "0"]) == 2
    assert mmgen_main(["data", "synth", "--out", str(tmp_path), "--num", "2", "--split", "heldout"]) == 2
    assert "holdout" in capsys.readouterr().err


def test_inspect_table_and_json(synth_dir, tmp_path, capsys):
    bad = tmp_path / "mixed"
    bad.mkdir()
    for name in ("00000.mp4", "00001.mp4"):
        (bad / name).write_bytes((synth_dir / name).read_bytes())
    (bad / "sub").mkdir()
    (bad / "sub" / "broken.avi").write_text("not a video")
    (bad / "empty.webm").touch()

    assert main(["inspect", str(bad)]) == 0
    captured = capsys.readouterr()
    for expected in ("videos", "unreadable", "32x32 (2)"):
        assert expected in captured.out
    for skipped in ("sub/broken.avi", "empty.webm"):  # each bad file named in one line
        assert f"mmgen data inspect: skipped {skipped}:" in captured.err
    assert "2 video(s) done, 2 skipped" in captured.err

    assert main(["inspect", str(bad), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["videos"], summary["readable"], summary["unreadable"]) == (4, 2, 2)
    assert summary["frames"] == {"min": 9, "median": 9, "max": 9, "total": 18}
    assert summary["fps"] == {"8": 2}
    assert summary["duration_s"] == pytest.approx(2 * 9 / 8)


def test_inspect_missing_or_empty_folder(tmp_path, capsys):
    from mmgen.cli import main as mmgen_main

    assert mmgen_main(["data", "inspect", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["videos"] == 0
