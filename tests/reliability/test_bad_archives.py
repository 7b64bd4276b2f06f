"""
Hostile archives, made in the test: zip and tar.gz with member names that
climb out (C{..}, absolute paths, drive letters, backslashes, NUL), links
pointing out (symbolic and hard), device files and FIFOs, duplicate and
conflicting names, names too long, headers that lie about sizes, bombs
past the budget, and garbage.  Every one installs inside its target or is
refused with one clear error; after every example nothing exists outside
the target that was not there before, the version installed before is
untouched when the new one is refused, and no scratch directory is left.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import struct
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from buntime.apps.install import install_archive
from buntime.archive import InstallError
from buntime.plugins.install import stage_plugin

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BUDGET = 64 * 1024
MAX_FILES = 40
SECONDS = 5.0
CODES = {"INVALID_ARCHIVE", "PATH_TRAVERSAL", "PAYLOAD_TOO_LARGE", "MISSING_PARAMS", "MISSING_NAME"}

SEGMENTS = st.sampled_from(
    ["a", "b", "static", "..", ".", "", "C:", "c:", "\\", "..\\..", "x\\y", "\x00", "~", "a" * 300]
) | st.text(min_size=1, max_size=6)
HOSTILE_NAMES = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "", "/", "//", "./", "../", "C:/", "\\\\host\\share\\"]),
    st.lists(SEGMENTS, min_size=1, max_size=4),
)
SAFE_NAMES = st.sampled_from(["index.html", "static/app.js", "a/b/c.txt", "a/", "a", "./b//c"])
NAMES = st.one_of(HOSTILE_NAMES, SAFE_NAMES, SAFE_NAMES)
LINK_TARGETS = st.sampled_from(
    ["../outside/secret", "/etc/passwd", "../../outside", "manifest.yaml", "a", "..", "/"]
)
KINDS = st.sampled_from(
    ["file", "file", "file", "file", "dir", "symlink", "hardlink", "chr", "fifo"]
)
ENTRY = st.tuples(KINDS, NAMES, st.binary(max_size=64), LINK_TARGETS)
MANIFESTS = st.sampled_from(
    [
        b"name: fuzz\nversion: 1.0.0\n",
        b"name: fuzz\nversion: 1.0.0\n",
        b"name: fuzz\nversion: 1.0.0\n",
        b"name: fuzz\nversion: 2.0.0\n",
        b"name: other\nversion: 1.0.0\n",
        b"name: ../escape\nversion: 1.0.0\n",
        b"name: fuzz\nversion: ../../x\n",
        b"name: fuzz\n",
        b"[",
        b"name: api\nversion: 1.0.0\n",
    ]
)


def _zip(manifest: bytes | None, entries: list, lie: bool, bomb: bool) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if manifest is not None:
            archive.writestr("manifest.yaml", manifest)
        if bomb:
            archive.writestr("bomb.bin", bytes(4 * BUDGET))
        for kind, name, data, target in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            mode = {
                "dir": stat.S_IFDIR | 0o755,
                "symlink": stat.S_IFLNK | 0o777,
                "hardlink": stat.S_IFREG | 0o644,
                "chr": stat.S_IFCHR | 0o644,
                "fifo": stat.S_IFIFO | 0o644,
            }.get(kind, stat.S_IFREG | 0o644)
            info.external_attr = mode << 16
            if kind == "dir" and not info.filename.endswith("/"):
                info.filename += "/"
            archive.writestr(info, target.encode() if kind == "symlink" else data)
    data = buffer.getvalue()
    if lie:  # every central directory entry claims 1 byte uncompressed
        data = bytearray(data)
        at = data.find(b"PK\x01\x02")
        while at >= 0:
            data[at + 24 : at + 28] = struct.pack("<I", 1)
            at = data.find(b"PK\x01\x02", at + 4)
        data = bytes(data)
    return data


def _tar(manifest: bytes | None, entries: list, lie: bool, bomb: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:

        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(data) if info.size else None)

        if manifest is not None:
            add(tarfile.TarInfo("manifest.yaml"), manifest)
        if bomb:
            add(tarfile.TarInfo("bomb.bin"), bytes(4 * BUDGET))
        for kind, name, data, target in entries:
            info = tarfile.TarInfo(name)
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }.get(kind, tarfile.REGTYPE)
            info.linkname = target if kind in ("symlink", "hardlink") else ""
            add(info, data)
    raw = bytearray(buffer.getvalue())
    if lie and len(raw) >= 512:  # the first member claims 8 GiB
        raw[124:136] = b"77777777777\x00"
        raw[148:156] = b"        "
        raw[148:156] = b"%06o\x00 " % (sum(raw[:512]) & 0o777777)
    return gzip.compress(bytes(raw), mtime=0)


PLAIN_FILES = st.tuples(st.just("file"), SAFE_NAMES, st.binary(max_size=64), st.just(""))
RARELY = st.sampled_from([False, False, False, True])
ARCHIVES = st.tuples(
    st.sampled_from(["zip", "tar"]),
    st.one_of(st.none(), MANIFESTS, MANIFESTS, MANIFESTS),
    st.lists(ENTRY, max_size=6) | st.lists(PLAIN_FILES, max_size=4),
    RARELY,
    RARELY,
    st.one_of(st.none(), st.none(), st.none(), st.integers(0, 400)),
    st.one_of(st.none(), st.none(), st.none(), st.binary(min_size=1, max_size=200)),
)


def _build(spec: tuple) -> tuple[bytes, str]:
    kind, manifest, entries, lie, bomb, cut, noise = spec
    try:
        data = (_zip if kind == "zip" else _tar)(manifest, entries, lie, bomb)
    except (ValueError, UnicodeError, OSError, tarfile.TarError, struct.error):
        assume(False)  # the library would not write it: nothing to try
    if cut is not None:
        data = data[: max(len(data) - cut, 0)]
    if noise is not None:
        data = data[:100] + noise + data[100 + len(noise) :]
    return data, "fuzz.zip" if kind == "zip" else "fuzz.tar.gz"


def _snapshot(root: str) -> dict[str, object]:
    seen: dict[str, object] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                seen[relative] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                seen[relative] = "dir"
            else:
                with open(path, "rb") as f:
                    seen[relative] = f.read()
    return seen


def _world(base: Path) -> tuple[str, str, str]:
    """A fresh root: a sentinel dir beside the worker dir, which holds fuzz@1.0.0 already."""
    root = tempfile.mkdtemp(dir=base)
    outside = os.path.join(root, "outside")
    os.makedirs(outside)
    Path(outside, "secret").write_bytes(b"secret")
    workers = os.path.join(root, "workers")
    previous = os.path.join(workers, "fuzz", "1.0.0")
    os.makedirs(previous)
    Path(previous, "manifest.yaml").write_bytes(b"name: fuzz\nversion: 1.0.0\n")
    Path(previous, "index.html").write_bytes(b"the version installed before")
    return root, workers, outside


def _no_scratch(directory: str) -> bool:
    return not any(name.startswith(".buntime-install") for name in os.listdir(directory))


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")
@FUZZ
@given(spec=ARCHIVES)
@example(spec=("zip", None, [("file", "", b"", "")], False, False, None, None))  # was IndexError
@example(
    spec=("zip", None, [("file", "a", b"\0\0\0", "")], False, False, None, b"\1")
)  # ValueError
@example(
    spec=(
        "tar",
        b"name: fuzz\nversion: 1.0.0\n",
        [("file", "a/b", b"x", "")],
        False,
        False,
        None,
        None,
    )
)
def test_an_app_archive_installs_inside_its_target_or_changes_nothing(tmp_path, spec):
    data, filename = _build(spec)
    root, workers, _ = _world(tmp_path)
    try:
        before = _snapshot(root)
        started = time.monotonic()
        try:
            installed = install_archive(
                data, filename, workers, max_total_bytes=BUDGET, max_files=MAX_FILES
            )
        except InstallError as error:
            event(f"refused: {error.code}")
            assert error.code in CODES and "\n" not in error.message, error
            assert _snapshot(root) == before
        else:
            event("installed")
            target = os.path.realpath(installed.path)
            assert target.startswith(os.path.realpath(workers) + os.sep)
            after = _snapshot(root)
            inside = os.path.relpath(target, root)
            changed = {
                path for path in set(before) | set(after) if before.get(path) != after.get(path)
            }
            assert all(
                path == inside
                or path.startswith(inside + os.sep)
                or path == os.path.dirname(inside)
                for path in changed
            ), changed
            assert not any(isinstance(v, tuple) for p, v in after.items() if p.startswith(inside))
        assert _no_scratch(workers)
        assert time.monotonic() - started < SECONDS
    finally:
        shutil.rmtree(root)


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")
@FUZZ
@given(spec=ARCHIVES)
def test_a_plugin_archive_stages_inside_its_dir_and_rolls_back_to_what_was(tmp_path, spec):
    data, filename = _build(spec)
    root, workers, _ = _world(tmp_path)
    try:
        before = _snapshot(root)
        try:
            staged = stage_plugin(
                data, filename, workers, max_total_bytes=BUDGET, max_files=MAX_FILES
            )
        except InstallError as error:
            assert error.code in CODES and "\n" not in error.message, error
        else:
            assert os.path.realpath(staged.path).startswith(os.path.realpath(workers) + os.sep)
            staged.rollback()
        assert _snapshot(root) == before
        assert _no_scratch(workers)
    finally:
        shutil.rmtree(root)
