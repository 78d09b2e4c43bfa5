"""`make data`'s routes to the dataset (distill_utils.setup.fetch), each with the machine's calls replaced:
found offline, OFFLINE=1, Debian's package by apt-get (root or passwordless sudo), torchvision's download
checked against data/README.md's SHA-256 sums. No network, no package installed, no root needed."""
import dataclasses
import gzip
import hashlib
import re
import subprocess
from pathlib import Path
from urllib.error import URLError

import pytest

from conftest import make_idx_dataset
from distill_utils import __main__ as cli
from distill_utils import data
from distill_utils.data import DataError, download_dataset, load_dataset
from distill_utils.setup import fetch
from distill_utils.setup.fetch import System, get_dataset

REPO = Path(__file__).resolve().parents[1]
GZ_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def untouchable(*args, **kwargs):
    raise AssertionError(f"the machine was touched: {args} {kwargs}")


def debian_release(tmp_path, text='ID=debian\nVERSION_ID="12"\n'):
    path = tmp_path / "os-release"
    path.write_text(text)
    return path


class FakeApt:
    """subprocess.run for apt-get/sudo: records each command; ``install`` puts the dataset where
    Debian's package would (``folder``) on the ``works_after``-th install."""

    def __init__(self, folder, works_after=1, sudo_ok=True):
        self.folder, self.works_after, self.sudo_ok, self.commands, self.installs = folder, works_after, sudo_ok, [], 0

    def __call__(self, cmd, **kwargs):
        self.commands.append(list(cmd))
        assert kwargs.get("capture_output"), "apt-get's output is captured (one line of ours instead)"
        if cmd[:3] == ["sudo", "-n", "true"]:
            return subprocess.CompletedProcess(cmd, 0 if self.sudo_ok else 1, "", "sudo: a password is required")
        if "install" in cmd:
            assert kwargs["env"]["DEBIAN_FRONTEND"] == "noninteractive"
            self.installs += 1
            if self.installs >= self.works_after:
                make_idx_dataset(self.folder, gz=True)
                return subprocess.CompletedProcess(cmd, 0, "", "")
            return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package dataset-fashion-mnist")
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def debian_folder(tmp_path, monkeypatch):
    """Debian's Fashion-MNIST folder moved to an empty temporary one (the installed one stays)."""
    folder = tmp_path / "usr-share-datasets-fashion-mnist"
    monkeypatch.setitem(data.DATASETS, "fashion_mnist",
                        dataclasses.replace(data.DATASETS["fashion_mnist"], debian=str(folder)))
    return folder


def fake_downloader():
    """A torchvision stand-in: writes tiny gzipped IDX files (and their unpacked copies) where it would."""
    def fetch_files(name, root):
        raw = Path(root) / data.DATASETS[name].folder / "raw"
        make_idx_dataset(raw, gz=False)
        for path in list(raw.iterdir()):
            with gzip.GzipFile(raw / f"{path.name}.gz", "wb", mtime=0) as f:
                f.write(path.read_bytes())
    return fetch_files


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_found_offline_touches_nothing(tmp_path, debian_folder):
    make_idx_dataset(tmp_path / "FashionMNIST" / "raw")
    system = System(run=untouchable, download=untouchable, say=untouchable, which=untouchable)
    assert get_dataset("fashion_mnist", tmp_path, system=system) == (str(tmp_path / "FashionMNIST" / "raw"), "found")
    make_idx_dataset(debian_folder, gz=True)
    assert get_dataset("fashion_mnist", tmp_path / "empty", system=system) == (str(debian_folder), "found")


def test_offline_keeps_the_message_and_never_touches_the_machine(tmp_path, debian_folder):
    system = System(run=untouchable, download=untouchable, say=untouchable, which=untouchable, euid=untouchable)
    with pytest.raises(DataError) as err:
        get_dataset("fashion_mnist", tmp_path, offline=True, system=system)
    text = str(err.value)
    assert text.startswith(data.missing_message("fashion_mnist", tmp_path))
    assert "sudo apt-get install dataset-fashion-mnist" in text and "OFFLINE is set" in text
    for value, offline in [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("", False), ("off", False)]:
        assert fetch.offline_requested({"OFFLINE": value}) is offline, value
    assert fetch.offline_requested({}) is False


def test_offline_environment_variable_reaches_the_command(tmp_path, debian_folder, monkeypatch, capsys):
    monkeypatch.setenv("OFFLINE", "1")
    assert cli.main(["data", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAIL: dataset 'fashion_mnist' not found. Get it one of these ways:")
    assert err.count("\n") == 1 and "OFFLINE is set: nothing was installed or downloaded" in err


def test_debian_as_root_installs_the_package_with_apt_get(tmp_path, debian_folder):
    apt, said = FakeApt(debian_folder), []
    system = System(run=apt, euid=lambda: 0, which=lambda name: f"/usr/bin/{name}", download=untouchable,
                    os_release=debian_release(tmp_path), say=said.append, environ={"PATH": "/usr/bin"})
    assert get_dataset("fashion_mnist", tmp_path / "data", system=system) == (str(debian_folder), "apt-get")
    assert apt.commands == [["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]]
    assert said == ["dataset 'fashion_mnist' is in no offline place: installing Debian's dataset-fashion-mnist "
                    "with `apt-get install -y dataset-fashion-mnist` (OFFLINE=1 never does)"]
    assert load_dataset("fashion_mnist", root=tmp_path / "data").source == str(debian_folder)


def test_fresh_container_updates_the_package_lists_then_installs(tmp_path, debian_folder):
    apt = FakeApt(debian_folder, works_after=2)
    system = System(run=apt, euid=lambda: 0, which=lambda name: f"/usr/bin/{name}", download=untouchable,
                    os_release=debian_release(tmp_path, "ID=ubuntu\nID_LIKE=debian\n"), say=lambda line: None)
    assert get_dataset("fashion_mnist", tmp_path, system=system)[1] == "apt-get"
    install = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    assert apt.commands == [install, ["apt-get", "update", "-q"], install]


def test_passwordless_sudo_installs_with_sudo_n(tmp_path, debian_folder):
    apt, said = FakeApt(debian_folder), []
    system = System(run=apt, euid=lambda: 1000, which=lambda name: f"/usr/bin/{name}", download=untouchable,
                    os_release=debian_release(tmp_path), say=said.append)
    assert get_dataset("fashion_mnist", tmp_path, system=system)[1] == "apt-get"
    assert apt.commands == [["sudo", "-n", "true"], ["sudo", "-n", "apt-get", "install", "-y", "-q",
                                                      "dataset-fashion-mnist"]]
    assert "with `sudo -n apt-get install -y dataset-fashion-mnist`" in said[0]


@pytest.mark.parametrize("machine", ["sudo asks a password", "not Debian", "no apt-get", "download asked"])
def test_without_apt_get_the_download_is_checked_against_the_readme_sums(tmp_path, debian_folder, monkeypatch,
                                                                        machine):
    apt, said = FakeApt(debian_folder, sudo_ok=machine != "sudo asks a password"), []
    other = 'ID=fedora\nID_LIKE="rhel centos"\n'
    release = debian_release(tmp_path, other if machine == "not Debian" else "ID=debian\n")
    which = (lambda name: None if name == "apt-get" else f"/usr/bin/{name}") if machine == "no apt-get" \
        else (lambda name: f"/usr/bin/{name}")
    root = tmp_path / "data"
    fetch_files = fake_downloader()
    fetch_files("fashion_mnist", tmp_path / "probe")  # the same bytes the download will write: their sums
    probe = tmp_path / "probe" / "FashionMNIST" / "raw"
    monkeypatch.setitem(data.DOWNLOAD_SHA256, "fashion_mnist", {f: sha256(probe / f) for f in GZ_FILES})
    system = System(run=apt, euid=lambda: 1000, which=which, os_release=release, say=said.append,
                    download=lambda name, root: download_dataset(name, root, fetch=fetch_files))
    got = get_dataset("fashion_mnist", root, download_only=machine == "download asked", system=system)
    assert got == (str(root / "FashionMNIST" / "raw"), "download")
    assert not any("apt-get" in cmd for cmd in apt.commands)  # never installed anything
    assert said == [f"dataset 'fashion_mnist' is in no offline place: downloading it with torchvision into "
                    f"{root / 'FashionMNIST'}, checked against data/README.md's SHA-256 sums"]


def test_apt_get_failing_falls_back_to_the_download_and_says_both(tmp_path, debian_folder):
    apt = FakeApt(debian_folder, works_after=99)

    def offline(name, root):
        raise URLError("[Errno -3] Temporary failure in name resolution")
    system = System(run=apt, euid=lambda: 0, which=lambda name: f"/usr/bin/{name}", os_release=debian_release(tmp_path),
                    say=lambda line: None, download=lambda name, root: download_dataset(name, root, fetch=offline))
    with pytest.raises(DataError) as err:
        get_dataset("fashion_mnist", tmp_path, system=system)
    text = str(err.value)
    assert text.startswith("the download of 'fashion_mnist' failed (URLError: <urlopen error [Errno -3] Temporary "
                           "failure in name resolution>).\ndataset 'fashion_mnist' not found. Get it one of these")
    assert text.endswith("apt-get failed first: E: Unable to locate package dataset-fashion-mnist")
    assert len(apt.commands) == 3  # install, update, install


def test_a_download_with_other_bytes_is_refused_and_deleted(tmp_path, no_debian):
    with pytest.raises(DataError) as err:  # the real sums: the fake files differ
        download_dataset("fashion_mnist", tmp_path, fetch=fake_downloader())
    raw = tmp_path / "FashionMNIST" / "raw"
    bad = raw / "train-images-idx3-ubyte.gz"
    assert re.fullmatch(rf"downloaded {re.escape(str(bad))} has SHA-256 [0-9a-f]{{64}}, not "
                        rf"{data.DOWNLOAD_SHA256['fashion_mnist'][bad.name]} \(data/README.md\); it was deleted\. "
                        r"Run `make data` again, or install the files another way \(data/README.md\)\.", str(err.value))
    assert not bad.exists() and not bad.with_suffix("").exists()
    with pytest.raises(DataError, match="not found"):  # what is left is not taken for the dataset
        load_dataset("fashion_mnist", root=tmp_path)


def test_the_pinned_sums_are_data_readme_sums():
    readme = (REPO / "data" / "README.md").read_text()
    listed = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
    assert listed == data.DOWNLOAD_SHA256["fashion_mnist"] and sorted(listed) == sorted(GZ_FILES)


def test_debian_like_reads_os_release(tmp_path):
    for text, expected in [("ID=debian\n", True), ('ID="ubuntu"\nID_LIKE=debian\n', True),
                           ("ID=linuxmint\nID_LIKE='ubuntu debian'\n", True), ("ID=fedora\n", False),
                           ("ID=arch\nNAME=debian-ish\n", False)]:
        assert fetch.debian_like(debian_release(tmp_path, text)) is expected, text
    assert fetch.debian_like(tmp_path / "missing") is False


def test_a_dataset_without_a_debian_package_is_downloaded_without_apt_get(tmp_path):
    said, fetched = [], []

    def fake_cifar(name, root):
        fetched.append(name)
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for file in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (folder / file).write_bytes(b"")
    system = System(run=untouchable, euid=lambda: 0, which=lambda name: f"/usr/bin/{name}",
                    os_release=debian_release(tmp_path), say=said.append, download=fake_cifar)
    assert get_dataset("cifar10", tmp_path, system=system) == (str(tmp_path / "cifar-10-batches-py"), "download")
    assert fetched == ["cifar10"] and said == [f"dataset 'cifar10' is in no offline place: downloading it with "
                                               f"torchvision into {tmp_path / 'cifar-10-batches-py'}, checked by "
                                               "its MD5 sums"]
    assert "`python -m distill_utils data --name cifar10`" in data.missing_message("cifar10", tmp_path)
