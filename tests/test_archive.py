"""
Archive handling shared by app and plugin installs (L{buntime.archive},
L{buntime.unpacked}): entry checks, budgets, extraction into a scratch
directory, and putting the result in place atomically.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from buntime import archive
from buntime.apps.install import install_archive
from buntime.archive import Budget, InstallError, entry_parts
from buntime.plugins.install import stage_plugin
from buntime.unpacked import exchange_paths, unpack

# -- entry names ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "a/../../evil",
        "a/..",
        "/etc/passwd",
        "C:/evil",
        "c:evil",
        "..\\evil",
        "a\\b",
        "a\x00/../evil",
    ],
)
def test_entry_names_that_escape_are_refused(name: str) -> None:
    with pytest.raises(InstallError) as caught:
        entry_parts(name)
    assert caught.value.code == "PATH_TRAVERSAL"


def test_entry_names_are_normalized() -> None:
    assert entry_parts("./a//b/./c.txt") == ("a", "b", "c.txt")
    assert entry_parts("./") == ()
    assert entry_parts("a..b/c") == ("a..b", "c")


# -- budgets ----------------------------------------------------------------------


def test_entry_yielding_more_than_its_header_is_cut_off(tmp_path: Path) -> None:
    """The copy counts real bytes: a stream that outgrows its header is refused."""
    entry = archive._Entry(("big",), False, 10, False, lambda: io.BytesIO(bytes(100)))
    budget = Budget(max_total_bytes=1000, max_files=10)
    with pytest.raises(InstallError) as caught:
        archive._copy(entry, str(tmp_path / "big"), budget)
    assert caught.value.code == "INVALID_ARCHIVE"


def test_bytes_written_are_counted_against_the_budget() -> None:
    budget = Budget(max_total_bytes=100, max_files=10)
    budget.wrote(100)
    with pytest.raises(InstallError) as caught:
        budget.wrote(1)
    assert caught.value.status == 413


# -- unpacking and putting in place -------------------------------------------------


def make_zip(files: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for name, data in files.items():
            out.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            out.writestr(info, target)
    return buffer.getvalue()


def has_manifest(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "manifest.yaml"))


def test_unpack_extracts_into_a_hidden_scratch_dir_beside_the_target(tmp_path: Path) -> None:
    unpacked = unpack(
        make_zip({"top/manifest.yaml": b"{}"}), "a.zip", str(tmp_path), Budget(100, 10)
    )
    assert os.path.dirname(unpacked.scratch) == str(tmp_path)
    assert os.path.basename(unpacked.scratch).startswith(".")
    assert unpacked.root(has_manifest) == os.path.join(unpacked.extracted, "top")
    unpacked.discard()
    assert os.listdir(tmp_path) == []


def test_unpack_leaves_nothing_behind_when_refused(tmp_path: Path) -> None:
    big = make_zip({"manifest.yaml": b"{}", "big.bin": bytes(1000)})
    with pytest.raises(InstallError) as caught:
        unpack(big, "a.zip", str(tmp_path), Budget(max_total_bytes=100, max_files=10))
    assert caught.value.code == "PAYLOAD_TOO_LARGE"
    assert os.listdir(tmp_path) == []


def test_an_archive_without_a_manifest_has_no_root(tmp_path: Path) -> None:
    unpacked = unpack(make_zip({"a/x": b"", "b/y": b""}), "a.zip", str(tmp_path), Budget(100, 10))
    assert unpacked.root(has_manifest) is None
    unpacked.discard()


def test_move_into_place_creates_the_parents_and_swaps_out_an_old_copy(tmp_path: Path) -> None:
    target = tmp_path / "@scope" / "name"
    for version in (b"1", b"2"):
        unpacked = unpack(make_zip({"v": version}), "a.zip", str(tmp_path), Budget(100, 10))
        aside = unpacked.move_into_place(unpacked.extracted, str(target), str(tmp_path))
        if version == b"1":
            assert aside is None
        else:
            assert aside is not None and aside.startswith(unpacked.scratch)
            assert Path(aside, "v").read_bytes() == b"1"
        assert (target / "v").read_bytes() == version
        unpacked.discard()
    assert sorted(os.listdir(tmp_path)) == ["@scope"]


def test_a_copy_another_runtime_moves_in_at_the_same_moment_is_replaced(
    tmp_path: Path, monkeypatch
) -> None:
    """Two runtimes sharing a worker dir install one version at once: the last one wins."""
    target = tmp_path / "name" / "1.0.0"
    first = unpack(make_zip({"v": b"1"}), "a.zip", str(tmp_path), Budget(100, 10))
    second = unpack(make_zip({"v": b"2"}), "a.zip", str(tmp_path), Budget(100, 10))
    real_lexists = os.path.lexists
    looked: list[str] = []

    def not_there_yet(path: str) -> bool:  # the second looks before the first moves in
        looked.append(path)
        return False if len(looked) == 2 else real_lexists(path)

    monkeypatch.setattr(os.path, "lexists", not_there_yet)
    assert first.move_into_place(first.extracted, str(target), str(tmp_path)) is None
    aside = second.move_into_place(second.extracted, str(target), str(tmp_path))
    monkeypatch.undo()
    assert len(looked) == 2
    assert (target / "v").read_bytes() == b"2"
    assert aside is not None and Path(aside, "v").read_bytes() == b"1"
    for unpacked in (first, second):
        unpacked.discard()
    assert sorted(os.listdir(tmp_path)) == ["name"]


def test_a_failed_move_removes_the_parents_it_made(tmp_path: Path, monkeypatch) -> None:
    unpacked = unpack(make_zip({"v": b"1"}), "a.zip", str(tmp_path), Budget(100, 10))

    def failing(source: str, destination: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError):
        unpacked.move_into_place(unpacked.extracted, str(tmp_path / "a" / "b"), str(tmp_path))
    monkeypatch.undo()
    unpacked.discard()
    assert os.listdir(tmp_path) == []


def test_exchange_paths_swaps_two_directories_at_once(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "v").write_text("1")
    (new / "v").write_text("2")
    assert exchange_paths(str(new), str(old)) is True  # Linux, a local file system
    assert (old / "v").read_text() == "2" and (new / "v").read_text() == "1"


# -- both installers refuse the same archives ----------------------------------------


@pytest.mark.parametrize(
    "files, symlinks, code",
    [
        ({"manifest.yaml": b"name: x\nversion: 1.0.0\n", "../evil": b""}, None, "PATH_TRAVERSAL"),
        ({"manifest.yaml": b"name: x\nversion: 1.0.0\n"}, {"link": "/etc"}, "PATH_TRAVERSAL"),
        (
            {"manifest.yaml": b"name: x\nversion: 1.0.0\n", "big": bytes(4096)},
            None,
            "PAYLOAD_TOO_LARGE",
        ),
        ({"manifest.yaml": b"name: x\nversion: 1.0.0\n", "x" * 300: b""}, None, "INVALID_ARCHIVE"),
    ],
)
@pytest.mark.parametrize("installer", [install_archive, stage_plugin])
def test_apps_and_plugins_share_the_checks(
    tmp_path: Path, installer, files, symlinks, code
) -> None:
    target = tmp_path / "dir"
    target.mkdir()
    data = make_zip(files, symlinks=symlinks)
    with pytest.raises(InstallError) as caught:
        installer(data, "x.zip", str(target), max_total_bytes=1024)
    assert caught.value.code == code
    assert os.listdir(target) == []


# -- tar headers tarfile reads into memory --------------------------------------


def gzipped(*blocks: bytes, zeros: int = 0) -> bytes:
    """A tar.gz of C{blocks}, then C{zeros} bytes of zeros (cheap once gzipped)."""
    import gzip

    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as out:
        for block in blocks:
            out.write(block)
        chunk = b"\0" * 65536
        while zeros > 0:
            out.write(chunk[:zeros])
            zeros -= len(chunk)
    return raw.getvalue()


def header(name: str, kind: bytes, size: int) -> bytes:
    import tarfile

    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(format=tarfile.GNU_FORMAT)


@pytest.mark.parametrize("kind", [b"L", b"K", b"x", b"g"])
def test_a_tar_header_claiming_gigabytes_is_refused_before_it_is_read(tmp_path, kind) -> None:
    """A long name or pax header of 128 MiB of zeros, 130 KB gzipped: nothing near it is read."""
    import resource

    size = 128 * 1024 * 1024
    data = gzipped(header("././@LongLink", kind, size), zeros=size)
    assert len(data) < 200_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InstallError) as refused:
        archive.extract(data, "tar", str(tmp_path), Budget(64 * 1024, 100))
    assert refused.value.code == "PAYLOAD_TOO_LARGE"
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 50 * 1024
    assert os.listdir(tmp_path) == []


def test_many_small_tar_headers_are_counted_together(tmp_path) -> None:
    """Global pax headers, each small, add up in tarfile's memory: they count as a whole."""
    import tarfile

    blocks = []
    for n in range(200):
        info = tarfile.TarInfo("pax_global_header")
        info.type = tarfile.XGLTYPE
        info.pax_headers = {f"k{n}": "v" * 2000}
        blocks.append(info.tobuf(format=tarfile.PAX_FORMAT))
    with pytest.raises(InstallError) as refused:
        archive.extract(gzipped(*blocks), "tar", str(tmp_path), Budget(64 * 1024, 100))
    assert refused.value.code == "PAYLOAD_TOO_LARGE"


def test_sparse_tar_entries_are_refused(tmp_path) -> None:
    import tarfile

    info = tarfile.TarInfo("big")
    info.type = tarfile.GNUTYPE_SPARSE
    data = gzipped(info.tobuf(format=tarfile.GNU_FORMAT), zeros=1024)
    with pytest.raises(InstallError) as refused:
        archive.extract(data, "tar", str(tmp_path), Budget(64 * 1024, 100))
    assert refused.value.code == "INVALID_ARCHIVE"
    pax = tarfile.TarInfo("big")
    pax.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
    map_block = b"99999999\n" + b"1\n" * 200
    data = gzipped(pax.tobuf(format=tarfile.PAX_FORMAT), map_block, zeros=4096)
    with pytest.raises(InstallError) as refused:
        archive.extract(data, "tar", str(tmp_path), Budget(64 * 1024, 100))
    assert refused.value.code == "INVALID_ARCHIVE"


def test_pax_and_long_names_as_tools_write_them_still_install(tmp_path) -> None:
    """GNU tar's long names, POSIX pax records, git archive's global comment."""
    import tarfile

    long_name = "app/" + "d" * 150 + "/index.html"
    for form in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w:gz", format=form) as out:
            if form == tarfile.PAX_FORMAT:
                out.pax_headers = {"comment": "0123456789abcdef0123456789abcdef01234567"}
            for name, content in (("app/manifest.yaml", b"name: a\n"), (long_name, b"hi")):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.pax_headers = {"mtime": "1700000000.123456789"}
                out.addfile(info, io.BytesIO(content))
        into = tmp_path / str(form)
        into.mkdir()
        archive.extract(raw.getvalue(), "tar", str(into), Budget(64 * 1024, 100))
        assert (into / long_name).read_bytes() == b"hi"
