"""
Installing app archives safely and removing installed apps (SPEC §4).

Every refused archive must leave the disk exactly as it was: the whole tree
around the worker dir (a sentinel file beside it included) is snapshotted
before and compared after.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from buntime.apps.discovery import scan
from buntime.apps.install import install_archive
from buntime.apps.remove import remove_app
from buntime.archive import InstallError
from buntime.unpacked import exchange_paths

MANIFEST = b"name: hello\nversion: 1.0.0\n"


# -- archive builders -----------------------------------------------------------


def make_zip(files: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_member(name: str, data: bytes = b"", **attributes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = attributes.pop("mode", 0o644)
    for key, value in attributes.items():
        setattr(info, key, value)
    if info.type != tarfile.REGTYPE:
        info.size = 0
    return info, data


def make_tgz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buffer.getvalue()


def tgz_files(files: dict[str, bytes]) -> bytes:
    return make_tgz([tar_member(name, data) for name, data in files.items()])


def snapshot(root: Path) -> dict[str, object]:
    """Every path under C{root}: file contents, C{"dir"}, or the link target."""
    found: dict[str, object] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                found[relative] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[relative] = "dir"
            else:
                found[relative] = Path(path).read_bytes()
    return found


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A root holding a worker dir C{apps/} (with one app) and a sentinel file."""
    (tmp_path / "sentinel.txt").write_bytes(b"untouched")
    existing = tmp_path / "apps" / "other" / "2.0.0"
    existing.mkdir(parents=True)
    (existing / "manifest.yaml").write_bytes(b"name: other\nversion: 2.0.0\n")
    return tmp_path


def refused(site: Path, data, filename: str, **limits) -> InstallError:
    """Install must fail and change nothing under C{site}."""
    before = snapshot(site)
    with pytest.raises(InstallError) as caught:
        install_archive(data, filename, str(site / "apps"), **limits)
    assert snapshot(site) == before
    return caught.value


# -- refusals: paths and links --------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
@pytest.mark.parametrize("evil", ["../evil.txt", "../../evil.txt", "/tmp/evil-buntime.txt"])
def test_zip_slip_and_absolute_paths(site: Path, fmt: str, evil: str) -> None:
    files = {"manifest.yaml": MANIFEST, evil: b"pwned"}
    data = make_zip(files) if fmt == "zip" else tgz_files(files)
    error = refused(site, data, f"app.{fmt}")
    assert error.code == "PATH_TRAVERSAL"
    assert not os.path.exists("/tmp/evil-buntime.txt")


def test_nul_in_a_zip_entry_name(site: Path) -> None:
    data = make_zip({"manifest.yaml": MANIFEST, "a.txtQ../../evil": b"x"})
    data = data.replace(b"a.txtQ", b"a.txt\x00")
    assert refused(site, data, "app.zip").code == "PATH_TRAVERSAL"


def test_zip_symlink_is_refused(site: Path) -> None:
    data = make_zip({"manifest.yaml": MANIFEST}, symlinks={"link": "../../sentinel.txt"})
    error = refused(site, data, "app.zip")
    assert error.code == "PATH_TRAVERSAL"
    assert "symbolic link" in error.message


@pytest.mark.parametrize(
    "link",
    [
        tar_member("link", type=tarfile.SYMTYPE, linkname="../../sentinel.txt"),
        tar_member("link", type=tarfile.SYMTYPE, linkname="manifest.yaml"),
        tar_member("hard", type=tarfile.LNKTYPE, linkname="../../sentinel.txt"),
    ],
)
def test_tar_links_are_refused(site: Path, link) -> None:
    # The link comes first, and a file written through it comes after.
    data = make_tgz([link, tar_member("manifest.yaml", MANIFEST), tar_member("link/x", b"x")])
    assert refused(site, data, "app.tgz").code == "PATH_TRAVERSAL"


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_tar_special_files_are_refused(site: Path, kind: bytes) -> None:
    data = make_tgz([tar_member("manifest.yaml", MANIFEST), tar_member("dev", type=kind)])
    assert refused(site, data, "app.tar.gz").code == "INVALID_ARCHIVE"


def test_zip_special_file_is_refused(site: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.yaml", MANIFEST)
        info = zipfile.ZipInfo("fifo")
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        archive.writestr(info, b"")
    assert refused(site, buffer.getvalue(), "app.zip").code == "INVALID_ARCHIVE"


# -- refusals: bombs ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_size_bomb(site: Path, fmt: str) -> None:
    files = {"manifest.yaml": MANIFEST, "zeros.bin": bytes(2 * 1024 * 1024)}
    data = make_zip(files) if fmt == "zip" else tgz_files(files)
    assert len(data) < 64 * 1024
    error = refused(site, data, f"app.{fmt}", max_total_bytes=1024 * 1024)
    assert (error.code, error.status) == ("PAYLOAD_TOO_LARGE", 413)


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_file_count_bomb(site: Path, fmt: str) -> None:
    files = {"manifest.yaml": MANIFEST} | {f"f{i}.txt": b"" for i in range(50)}
    data = make_zip(files) if fmt == "zip" else tgz_files(files)
    error = refused(site, data, f"app.{fmt}", max_files=20)
    assert (error.code, error.status) == ("PAYLOAD_TOO_LARGE", 413)
    assert "20 entries" in error.message


def _patch_sizes(data: bytes, name: bytes, size: int) -> bytes:
    """Rewrite the uncompressed size of C{name} in both zip headers."""
    patched = bytearray(data)
    at = 0
    while (at := patched.find(b"PK\x03\x04", at)) >= 0:
        (length,) = struct.unpack("<H", patched[at + 26 : at + 28])
        if patched[at + 30 : at + 30 + length] == name:
            patched[at + 22 : at + 26] = struct.pack("<I", size)
        at += 4
    at = 0
    while (at := patched.find(b"PK\x01\x02", at)) >= 0:
        (length,) = struct.unpack("<H", patched[at + 28 : at + 30])
        if patched[at + 46 : at + 46 + length] == name:
            patched[at + 24 : at + 28] = struct.pack("<I", size)
        at += 4
    return bytes(patched)


def test_zip_with_lying_size_headers(site: Path) -> None:
    data = make_zip({"manifest.yaml": MANIFEST, "zeros.bin": bytes(512 * 1024)})
    data = _patch_sizes(data, b"zeros.bin", 10)
    assert zipfile.ZipFile(io.BytesIO(data)).getinfo("zeros.bin").file_size == 10
    error = refused(site, data, "app.zip", max_total_bytes=64 * 1024)
    assert error.code == "INVALID_ARCHIVE"


def test_zip_directory_promising_too_many_entries(site: Path) -> None:
    data = bytearray(make_zip({"manifest.yaml": MANIFEST}))
    end = data.rfind(b"PK\x05\x06")
    data[end + 8 : end + 12] = struct.pack("<HH", 60000, 60000)
    assert refused(site, bytes(data), "app.zip", max_files=100).status == 413


# -- refusals: content ----------------------------------------------------------


@pytest.mark.parametrize("filename", ["app.rar", "app.tar", "app.zip.exe", "app", "app.gz"])
def test_unsupported_file_types(site: Path, filename: str) -> None:
    data = make_zip({"manifest.yaml": MANIFEST})
    assert refused(site, data, filename).code == "INVALID_FILE_TYPE"


@pytest.mark.parametrize("filename", ["app.zip", "app.tgz", "app.tar.gz"])
def test_garbage_archives(site: Path, filename: str) -> None:
    assert refused(site, b"this is not an archive" * 10, filename).code == "INVALID_ARCHIVE"


def test_truncated_tgz(site: Path) -> None:
    data = tgz_files({"manifest.yaml": MANIFEST, "a.bin": os.urandom(20000)})
    assert refused(site, data[: len(data) // 2], "app.tgz").code == "INVALID_ARCHIVE"


def test_conflicting_entries(site: Path) -> None:
    data = make_tgz(
        [tar_member("manifest.yaml", MANIFEST), tar_member("a", b"file"), tar_member("a/b", b"x")]
    )
    error = refused(site, data, "app.tgz")
    assert error.code == "INVALID_ARCHIVE"
    assert "buntime-install" not in error.message


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_no_manifest(site: Path, fmt: str) -> None:
    files = {"app.py": b"app = None\n", "sub/manifest.yaml": MANIFEST, "other/x": b""}
    data = make_zip(files) if fmt == "zip" else tgz_files(files)
    assert refused(site, data, f"app.{fmt}").code == "MISSING_PARAMS"


@pytest.mark.parametrize(
    "manifest",
    [b"name: hello\n", b"version: 1.0.0\n", b"{}\n", b"name: ''\nversion: 1.0.0\n"],
)
def test_manifest_without_name_or_version(site: Path, manifest: bytes) -> None:
    data = make_zip({"manifest.yaml": manifest})
    assert refused(site, data, "app.zip").code == "MISSING_PARAMS"


def test_invalid_manifest_yaml(site: Path) -> None:
    data = make_zip({"manifest.yaml": b"name: [unclosed\n"})
    assert refused(site, data, "app.zip").code == "INVALID_ARCHIVE"


@pytest.mark.parametrize(
    ("manifest", "code"),
    [
        (b"name: Hello World\nversion: 1.0.0\n", "INVALID_ARCHIVE"),
        (b"name: Hello\nversion: 1.0.0\n", "INVALID_ARCHIVE"),
        (b"name: ../../evil\nversion: 1.0.0\n", "PATH_TRAVERSAL"),
        (b"name: a/b\nversion: 1.0.0\n", "PATH_TRAVERSAL"),
        (b"name: '@scope/../x'\nversion: 1.0.0\n", "PATH_TRAVERSAL"),
        (b"name: hello\nversion: 1.0\n", "INVALID_ARCHIVE"),
        (b"name: hello\nversion: '1.0'\n", "INVALID_ARCHIVE"),
        (b"name: hello\nversion: banana\n", "INVALID_ARCHIVE"),
        (b"name: hello\nversion: ../../../x\n", "PATH_TRAVERSAL"),
        (b"name: 12\nversion: 1.0.0\n", "INVALID_ARCHIVE"),
    ],
)
def test_bad_name_or_version(site: Path, manifest: bytes, code: str) -> None:
    assert refused(site, make_zip({"manifest.yaml": manifest}), "app.zip").code == code


@pytest.mark.parametrize(
    "manifest",
    [
        b"name: " + b"a" * 300 + b"\nversion: 1.0.0\n",
        b"name: '@" + b"s" * 300 + b"/hello'\nversion: 1.0.0\n",
        b"name: hello\nversion: 1.0.0-" + b"rc" * 150 + b"\n",
    ],
)
def test_a_name_or_version_longer_than_the_file_system_takes_is_refused(
    site: Path, manifest: bytes
) -> None:
    # the client's mistake, as an over-long entry name is: not a 500 "disk failed"
    error = refused(site, make_zip({"manifest.yaml": manifest}), "app.zip")
    assert (error.code, error.status) == ("INVALID_ARCHIVE", 400)
    assert "too long" in error.message


# -- successful installs --------------------------------------------------------


def leftovers(worker_dir: Path) -> list[str]:
    return [name for name in os.listdir(worker_dir) if name.startswith(".")]


def test_install_zip_from_bytes(site: Path) -> None:
    data = make_zip({"manifest.yaml": MANIFEST, "app.py": b"app = 1\n", "static/a.css": b"a{}"})
    app = install_archive(data, "hello.zip", str(site / "apps"), now=lambda: 1_700_000_000.25)
    assert (app.name, app.version) == ("hello", "1.0.0")
    assert app.path == str(site / "apps" / "hello" / "1.0.0")
    assert app.installed_at == "2023-11-14T22:13:20.250Z"
    assert (Path(app.path) / "app.py").read_bytes() == b"app = 1\n"
    assert (Path(app.path) / "static" / "a.css").read_bytes() == b"a{}"
    assert leftovers(site / "apps") == []
    assert (site / "sentinel.txt").read_bytes() == b"untouched"


def test_install_tgz_from_a_path_keeps_the_executable_bit(site: Path, tmp_path: Path) -> None:
    archive = tmp_path / "upload.tgz"
    archive.write_bytes(
        make_tgz(
            [
                tar_member("./", type=tarfile.DIRTYPE, mode=0o755),
                tar_member("./manifest.yaml", MANIFEST),
                tar_member("./run.sh", b"#!/bin/sh\n", mode=0o755),
                tar_member("./lib/", type=tarfile.DIRTYPE, mode=0o700),
                tar_member("./lib/x.py", b"x = 1\n", mode=0o4777),
            ]
        )
    )
    app = install_archive(str(archive), "UPLOAD.TGZ", str(site / "apps"))
    root = Path(app.path)
    assert os.access(root / "run.sh", os.X_OK)
    assert stat.S_IMODE((root / "manifest.yaml").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "lib" / "x.py").stat().st_mode) == 0o755  # no setuid
    assert leftovers(site / "apps") == []


def test_install_github_style_tar_gz_with_pyproject(site: Path) -> None:
    pyproject = b'[project]\nname = "tool"\nversion = "2.1.0-rc.1"\n'
    data = tgz_files({"tool-main/pyproject.toml": pyproject, "tool-main/app.py": b"app = 1\n"})
    app = install_archive(data, "tool.tar.gz", str(site / "apps"))
    assert (app.name, app.version) == ("tool", "2.1.0-rc.1")
    assert (Path(app.path) / "app.py").is_file()
    assert not (Path(app.path) / "tool-main").exists()


def test_install_github_style_zip_ignores_macos_metadata(site: Path) -> None:
    data = make_zip(
        {"hello-1/manifest.yml": MANIFEST, "hello-1/index.html": b"<p>", "__MACOSX/._x": b""}
    )
    app = install_archive(data, "hello.zip", str(site / "apps"))
    assert sorted(os.listdir(app.path)) == ["index.html", "manifest.yml"]


@pytest.mark.parametrize(
    "fmt, metadata",
    [
        ("zip", ".DS_Store"),  # Finder's, zipped from the folder holding hello-1/
        ("tgz", "._hello-1"),  # macOS tar's AppleDouble file for the directory's attributes
    ],
)
def test_install_single_top_level_dir_ignores_macos_metadata_files_beside_it(
    site: Path, fmt: str, metadata: str
) -> None:
    files = {"hello-1/manifest.yml": MANIFEST, "hello-1/index.html": b"<p>", metadata: b"\0"}
    data = make_zip(files) if fmt == "zip" else tgz_files(files)
    app = install_archive(data, f"hello.{fmt}", str(site / "apps"))
    assert sorted(os.listdir(app.path)) == ["index.html", "manifest.yml"]
    assert leftovers(site / "apps") == []


def test_install_scoped_and_latest(site: Path) -> None:
    data = make_zip({"manifest.yaml": b"name: '@acme/tool'\nversion: latest\n"})
    app = install_archive(data, "tool.zip", str(site / "apps"))
    assert app.path == str(site / "apps" / "@acme" / "tool" / "latest")
    assert (Path(app.path) / "manifest.yaml").is_file()


def test_install_creates_a_missing_worker_dir(tmp_path: Path) -> None:
    app = install_archive(make_zip({"manifest.yaml": MANIFEST}), "a.zip", str(tmp_path / "new"))
    assert os.path.isdir(app.path)


def test_install_from_a_file_object(site: Path) -> None:
    source = io.BytesIO(tgz_files({"manifest.yaml": MANIFEST}))
    source.read()  # the installer rewinds it
    app = install_archive(source, "a.tgz", str(site / "apps"))
    assert (Path(app.path) / "manifest.yaml").read_bytes() == MANIFEST


def test_manifest_name_with_pyproject_version(site: Path) -> None:
    data = make_zip(
        {
            "manifest.yaml": b"name: hello\ntimeout: 5s\n",
            "pyproject.toml": b'[project]\nname = "ignored"\nversion = "3.0.0"\n',
        }
    )
    app = install_archive(data, "a.zip", str(site / "apps"))
    assert (app.name, app.version) == ("hello", "3.0.0")


def test_replacing_an_existing_version(site: Path) -> None:
    worker_dir = str(site / "apps")
    first = install_archive(
        make_zip({"manifest.yaml": MANIFEST, "old.txt": b"1"}), "a.zip", worker_dir
    )
    second = install_archive(
        make_zip({"manifest.yaml": MANIFEST, "new.txt": b"2"}), "a.zip", worker_dir
    )
    assert first.path == second.path
    assert sorted(os.listdir(second.path)) == ["manifest.yaml", "new.txt"]
    assert leftovers(site / "apps") == []
    assert (site / "apps" / "other" / "2.0.0" / "manifest.yaml").is_file()


def test_replacement_renames_the_old_version_aside_then_the_new_one_in(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker_dir = str(site / "apps")
    install_archive(make_zip({"manifest.yaml": MANIFEST, "old.txt": b"1"}), "a.zip", worker_dir)
    target = os.path.join(worker_dir, "hello", "1.0.0")
    renames: list[tuple[str, str, list[str]]] = []
    real_rename = os.rename

    def spy(source: str, destination: str) -> None:
        renames.append((source, destination, sorted(os.listdir(source))))
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", spy)
    monkeypatch.setattr("buntime.unpacked.exchange_paths", lambda a, b: False)  # the fallback path
    install_archive(make_zip({"manifest.yaml": MANIFEST, "new.txt": b"2"}), "a.zip", worker_dir)
    (old_from, old_to, old_files), (new_from, new_to, new_files) = renames
    assert (old_from, old_files) == (target, ["manifest.yaml", "old.txt"])
    assert os.path.dirname(os.path.dirname(old_to)) == worker_dir
    assert (new_to, new_files) == (target, ["manifest.yaml", "new.txt"])
    assert os.path.dirname(os.path.dirname(new_from)) == worker_dir
    assert os.path.basename(os.path.dirname(new_from)).startswith(".")


def test_failed_swap_puts_the_old_version_back(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker_dir = str(site / "apps")
    install_archive(make_zip({"manifest.yaml": MANIFEST, "old.txt": b"1"}), "a.zip", worker_dir)
    before = snapshot(site)
    real_rename = os.rename
    calls = []

    def failing(source: str, destination: str) -> None:
        calls.append(source)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", failing)
    monkeypatch.setattr("buntime.unpacked.exchange_paths", lambda a, b: False)  # the fallback path
    with pytest.raises(OSError):
        install_archive(make_zip({"manifest.yaml": MANIFEST, "new.txt": b"2"}), "a.zip", worker_dir)
    monkeypatch.undo()
    assert snapshot(site) == before


def test_replacing_a_flat_version_in_place(site: Path) -> None:
    flat = site / "apps" / "hello@1.0.0"
    flat.mkdir()
    (flat / "old.txt").write_bytes(b"1")
    app = install_archive(make_zip({"manifest.yaml": MANIFEST}), "a.zip", str(site / "apps"))
    assert app.path == str(flat)
    assert sorted(os.listdir(flat)) == ["manifest.yaml"]
    assert not (site / "apps" / "hello").exists()


def test_an_upload_its_check_refuses_does_not_replace_a_working_version(site: Path) -> None:
    # the runtime checks an upload as serving it would (an entrypoint, a valid
    # manifest: tests/test_e2e_api.py); a refusal leaves the working copy
    worker_dir = str(site / "apps")
    install_archive(
        make_zip({"manifest.yaml": MANIFEST, "index.html": b"<p>"}), "a.zip", worker_dir
    )
    before = snapshot(site)
    checked: list[tuple[list[str], str]] = []

    def check(app_dir: str, label: str) -> None:
        checked.append((sorted(os.listdir(app_dir)), label))
        raise InstallError("INVALID_ENTRYPOINT", f"{label}: no entrypoint")

    with pytest.raises(InstallError) as raised:
        install_archive(
            make_zip({"manifest.yaml": MANIFEST, "README": b"x"}), "a.zip", worker_dir, check=check
        )
    assert raised.value.code == "INVALID_ENTRYPOINT"
    assert checked == [(["README", "manifest.yaml"], "hello@1.0.0")]
    assert snapshot(site) == before


def test_replacing_a_symlinked_flat_version_replaces_the_link_not_its_target(
    site: Path,
) -> None:
    # a release dir linked in as <name>@<version>: the upload must win over it, not
    # land in <name>/<version>/ where the flat link shadows it (flat beats nested)
    release = site / "releases" / "hello-1"
    release.mkdir(parents=True)
    (release / "manifest.yaml").write_bytes(MANIFEST)
    (release / "old.txt").write_bytes(b"1")
    flat = site / "apps" / "hello@1.0.0"
    flat.symlink_to(release)
    app = install_archive(
        make_zip({"manifest.yaml": MANIFEST, "new.txt": b"2"}), "a.zip", str(site / "apps")
    )
    assert app.path == str(flat)
    assert scan([str(site / "apps")])["hello"]["1.0.0"].dir == app.path
    assert not flat.is_symlink()
    assert sorted(os.listdir(flat)) == ["manifest.yaml", "new.txt"]
    assert sorted(os.listdir(release)) == ["manifest.yaml", "old.txt"]  # never written through
    assert leftovers(site / "apps") == []


# -- removal --------------------------------------------------------------------


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Path, Path]:
    """Two worker dirs with hello in every layout, a scoped app and a bystander."""
    first, second = tmp_path / "one", tmp_path / "two"
    for path in [
        first / "hello@1.0.0",
        first / "hello" / "2.0.0",
        first / "hello" / "latest",
        second / "hello" / "2.0.0",
        second / "@acme" / "tool" / "1.0.0",
        second / "@acme" / "other" / "1.0.0",
        first / "bystander" / "1.0.0",
    ]:
        path.mkdir(parents=True)
        (path / "manifest.yaml").write_bytes(b"{}\n")
    return first, second


def test_remove_all_versions(installed: tuple[Path, Path]) -> None:
    first, second = installed
    removed = remove_app([str(first), str(second)], None, "hello", None)
    assert sorted(removed) == sorted(
        [
            str(first / "hello@1.0.0"),
            str(first / "hello" / "2.0.0"),
            str(first / "hello" / "latest"),
            str(second / "hello" / "2.0.0"),
        ]
    )
    assert sorted(os.listdir(first)) == ["bystander"]
    assert sorted(os.listdir(second)) == ["@acme"]


def test_remove_one_version(installed: tuple[Path, Path]) -> None:
    first, second = installed
    removed = remove_app([str(first), str(second)], None, "hello", "2.0.0")
    assert sorted(removed) == [str(first / "hello" / "2.0.0"), str(second / "hello" / "2.0.0")]
    assert sorted(os.listdir(first / "hello")) == ["latest"]
    assert not (second / "hello").exists()
    assert (first / "hello@1.0.0").is_dir()


def test_remove_flat_version(installed: tuple[Path, Path]) -> None:
    first, _ = installed
    assert remove_app([str(first)], None, "hello", "1.0.0") == [str(first / "hello@1.0.0")]
    assert not (first / "hello@1.0.0").exists()


def test_remove_simple_layout_keeps_nested_versions(tmp_path: Path) -> None:
    app = tmp_path / "hello"
    (app / "1.0.0").mkdir(parents=True)
    (app / "1.0.0" / "manifest.yaml").write_bytes(b"{}\n")
    (app / "manifest.yaml").write_bytes(b"{}\n")
    (app / "app.py").write_bytes(b"")
    (app / "static").mkdir()
    assert remove_app([str(tmp_path)], None, "hello", "latest") == [str(app)]
    assert os.listdir(app) == ["1.0.0"]
    assert remove_app([str(tmp_path)], None, "hello", None) == [str(app / "1.0.0")]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("scope", ["acme", "@acme"])
def test_remove_scoped(installed: tuple[Path, Path], scope: str) -> None:
    first, second = installed
    assert remove_app([str(first), str(second)], scope, "tool", None) == [
        str(second / "@acme" / "tool" / "1.0.0")
    ]
    assert os.listdir(second / "@acme") == ["other"]


def test_remove_last_scoped_app_removes_the_scope_dir(installed: tuple[Path, Path]) -> None:
    _, second = installed
    remove_app([str(second)], "acme", "tool", "1.0.0")
    remove_app([str(second)], "acme", "other", None)
    assert not (second / "@acme").exists()


def test_remove_not_found(installed: tuple[Path, Path]) -> None:
    dirs = [str(p) for p in installed]
    before = [snapshot(p) for p in installed]
    with pytest.raises(InstallError) as caught:
        remove_app(dirs, None, "nope", None)
    assert (caught.value.code, caught.value.status) == ("APP_NOT_FOUND", 404)
    with pytest.raises(InstallError) as caught:
        remove_app(dirs, None, "hello", "9.9.9")
    assert (caught.value.code, caught.value.status) == ("VERSION_NOT_FOUND", 404)
    with pytest.raises(InstallError) as caught:
        remove_app(dirs, None, "hello", "not-a-version")
    assert caught.value.code == "VERSION_NOT_FOUND"
    with pytest.raises(InstallError) as caught:
        remove_app(dirs, "acme", "hello", None)
    assert caught.value.code == "APP_NOT_FOUND"
    assert [snapshot(p) for p in installed] == before


@pytest.mark.parametrize(
    ("scope", "name", "version"),
    [
        (None, "..", None),
        (None, "../one", None),
        (None, ".", None),
        ("..", "one", None),
        ("@..", "x", None),
        (None, "hello", ".."),
        (None, "hello", "../../x"),
        (None, "a\\b", None),
    ],
)
def test_remove_refuses_escapes(
    installed: tuple[Path, Path], scope: str | None, name: str, version: str | None
) -> None:
    before = snapshot(installed[0].parent)
    with pytest.raises(InstallError) as caught:
        remove_app([str(p) for p in installed], scope, name, version)
    assert caught.value.code == "PATH_TRAVERSAL"
    assert snapshot(installed[0].parent) == before


def test_remove_symlinked_app_unlinks_only_the_link(tmp_path: Path) -> None:
    release = tmp_path / "releases" / "hello-1"
    release.mkdir(parents=True)
    (release / "manifest.yaml").write_bytes(b"{}\n")
    worker_dir = tmp_path / "apps"
    worker_dir.mkdir()
    os.symlink(release, worker_dir / "hello@1.0.0")
    assert remove_app([str(worker_dir)], None, "hello", None) == [str(worker_dir / "hello@1.0.0")]
    assert os.listdir(worker_dir) == []
    assert (release / "manifest.yaml").is_file()


@pytest.mark.parametrize("nested", [False, True])
def test_removing_latest_of_a_symlinked_simple_app_deletes_nothing_behind_the_link(
    tmp_path: Path, nested: bool
) -> None:
    # <w>/hello -> a checkout elsewhere (simple layout): removing hello@latest used to
    # delete the checkout's files through the link
    checkout = tmp_path / "checkout"
    (checkout / "static").mkdir(parents=True)
    (checkout / "manifest.yaml").write_bytes(b"{}\n")
    (checkout / "index.html").write_bytes(b"<p>")
    (checkout / "static" / "a.css").write_bytes(b"a{}")
    if nested:  # a version nested inside it: the link cannot go without it
        (checkout / "2.0.0").mkdir()
        (checkout / "2.0.0" / "manifest.yaml").write_bytes(b"{}\n")
    worker_dir = tmp_path / "apps"
    worker_dir.mkdir()
    os.symlink(checkout, worker_dir / "hello")
    before = snapshot(checkout)
    if nested:
        with pytest.raises(InstallError) as caught:
            remove_app([str(worker_dir)], None, "hello", "latest")
        assert caught.value.code == "PATH_TRAVERSAL"
        assert os.path.islink(worker_dir / "hello")
    else:
        removed = remove_app([str(worker_dir)], None, "hello", "latest")
        assert removed == [str(worker_dir / "hello")]
        assert os.listdir(worker_dir) == []
    assert snapshot(checkout) == before


def test_remove_refuses_versions_reached_through_a_symlinked_name_dir(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "1.0.0").mkdir(parents=True)
    (outside / "1.0.0" / "manifest.yaml").write_bytes(b"{}\n")
    worker_dir = tmp_path / "apps"
    worker_dir.mkdir()
    os.symlink(outside, worker_dir / "hello")
    with pytest.raises(InstallError) as caught:
        remove_app([str(worker_dir)], None, "hello", "1.0.0")
    assert caught.value.code == "PATH_TRAVERSAL"
    assert (outside / "1.0.0" / "manifest.yaml").is_file()


@pytest.mark.parametrize("name", ["api", "health"])
def test_reserved_names_are_refused(name):
    from buntime.apps.install import check_name

    with pytest.raises(InstallError, match="reserved") as raised:
        check_name(name)
    assert raised.value.code == "INVALID_ARCHIVE"


def test_replacing_a_version_uses_the_atomic_exchange(site, monkeypatch):
    calls: list[tuple[str, str]] = []
    real = exchange_paths
    monkeypatch.setattr(
        "buntime.unpacked.exchange_paths", lambda a, b: calls.append((a, b)) or real(a, b)
    )
    worker_dir = str(site / "apps")
    install_archive(make_zip({"manifest.yaml": MANIFEST, "v.txt": b"1"}), "a.zip", worker_dir)
    assert calls == []  # nothing to replace the first time
    install_archive(make_zip({"manifest.yaml": MANIFEST, "v.txt": b"2"}), "a.zip", worker_dir)
    assert len(calls) == 1
    target = Path(worker_dir, "hello", "1.0.0")
    assert (target / "v.txt").read_text() == "2"
    assert not any(Path(worker_dir).glob(".*tmp*"))  # the old copy went with the scratch dir


def test_an_install_is_one_eliot_action(site: Path, eliot_logger) -> None:
    """Installed: an action ending with the app; refused: one failing at warn with the code."""
    install_archive(
        tgz_files({"manifest.yaml": b"name: logged\nversion: 1.0.0\n"}), "a.tgz", str(site / "apps")
    )
    refused(site, b"not an archive", "b.tgz")
    ends = [
        m
        for m in eliot_logger.messages
        if m.get("action_type") == "buntime:apps:install" and m["action_status"] != "started"
    ]
    installed, failed = ends
    assert (installed["action_status"], installed["app"], installed["version"]) == (
        "succeeded",
        "logged",
        "1.0.0",
    )
    assert (failed["action_status"], failed["level"], failed["code"]) == (
        "failed",
        "warn",
        "INVALID_ARCHIVE",
    )
    eliot_logger.validate()


@pytest.mark.parametrize("layout", ["hello/1.0.0", "hello@1.0.0"])
def test_a_version_another_worker_dir_holds_is_replaced_there(
    site: Path, tmp_path: Path, layout: str
) -> None:
    """Installed into the first dir, it would make two dirs claim one version (a collision)."""
    second = tmp_path / "more"
    (second / layout).mkdir(parents=True)
    (second / layout / "manifest.yaml").write_bytes(MANIFEST)
    (second / layout / "old.py").write_bytes(b"old = 1\n")
    upload = io.BytesIO(make_zip({"manifest.yaml": MANIFEST, "app.py": b"app = 2\n"}))
    app = install_archive(upload, "hello.zip", str(site / "apps"), others=[str(second)])
    assert app.path == str(second / layout)
    assert sorted(os.listdir(app.path)) == ["app.py", "manifest.yaml"]
    assert not (site / "apps" / "hello").exists()
    assert leftovers(site / "apps") == [] and leftovers(second) == []


def test_the_first_worker_dir_s_copy_wins_over_another_s(site: Path, tmp_path: Path) -> None:
    second = tmp_path / "more"
    for root in (site / "apps", second):
        (root / "hello" / "1.0.0").mkdir(parents=True)
        (root / "hello" / "1.0.0" / "manifest.yaml").write_bytes(MANIFEST)
    data = make_zip({"manifest.yaml": MANIFEST, "app.py": b"app = 3\n"})
    app = install_archive(data, "hello.zip", str(site / "apps"), others=[str(second)])
    assert app.path == str(site / "apps" / "hello" / "1.0.0")
    assert not (second / "hello" / "1.0.0" / "app.py").exists()
