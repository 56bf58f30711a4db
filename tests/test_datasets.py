"""Data set registry: search order, error messages, downloads from a local HTTP server, checksums."""

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rnnkit.data import REGISTRY, dataset_file, dataset_info, list_datasets, sha256sum, verify

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")
AIRLINE = ("timeseries", "airline-passengers.csv")
BABI = ("babi", "tasks_1-20_v1-2/en/qa1_single-supporting-fact_test.txt")


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    """No user settings leak in; the cache is a fresh folder; local URLs bypass any proxy."""
    monkeypatch.delenv("RNNKIT_DATA", raising=False)
    monkeypatch.delenv("RNNKIT_DATA_URL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve():
    """``serve(folder) -> base_url`` of an HTTP server on 127.0.0.1 serving ``folder``."""
    servers = []

    def start(folder: Path) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _put(root: Path, name: str, file: str, content: bytes = b"x") -> Path:
    path = root / name / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ------------------------------------------------------------------------------------- registry
def test_list_datasets():
    infos = list_datasets()
    assert [d.name for d in infos] == ["babi", "m3", "ptb", "sst-2", "timeseries", "tinyshakespeare", "tourism",
                                         "vic_elec"]
    for d in infos:
        assert d.description and d.citation and d.licence and d.files
        for spec in d.files.values():
            assert len(spec.sha256) == 64 and (spec.url is None or spec.url.startswith("https://"))


@needs_shared
def test_registry_matches_sha256sums():
    shared = {p.name for p in SHARED.iterdir() if (p / "SHA256SUMS").is_file()}
    assert set(REGISTRY) - shared == {"vic_elec"}  # no shared copy: fetched from its public URL into the cache
    assert shared <= set(REGISTRY)
    for name, info in ((name, REGISTRY[name]) for name in sorted(shared)):
        lines = (SHARED / name / "SHA256SUMS").read_text().splitlines()
        sums = {file: sha for sha, file in (line.split(maxsplit=1) for line in lines)}
        assert {f: info.files[f].sha256 for f in sums} == sums
        extra = set(info.files) - set(sums)
        if name == "ptb":
            assert extra == {"ptb.train.txt"}  # the public, uncompressed train split
        elif name == "babi":  # the shared copy holds tasks 1-10; the registry knows all twenty
            assert extra == {f for f in info.files if _babi_task(f) > 10}
        else:
            assert extra == set()
    assert sorted(_babi_task(f) for f in REGISTRY["babi"].files) == sorted(2 * list(range(1, 21)))


def _babi_task(file: str) -> int:
    """The task number of a bAbI file name, e.g. 15 for '.../qa15_basic-deduction_train.txt'."""
    return int(file.rsplit("/qa", 1)[1].split("_")[0])


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"name: expected a known data set \(babi, m3, ptb, sst-2.*got 'mnist'"):
        dataset_file("mnist", "train.csv")
    with pytest.raises(ValueError, match=r"file: .*'ptb' \(ptb.test.txt, ptb.train.txt, .*got 'ptb.txt'"):
        dataset_file("ptb", "ptb.txt")
    with pytest.raises(ValueError, match="name:"):
        dataset_info("mnist")


# ---------------------------------------------------------------------------------------- search
def test_search_order_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    cache = _put(tmp_path / "xdg" / "rnnkit", *AIRLINE)
    assert dataset_file(*AIRLINE) == cache
    env = _put(tmp_path / "env", *AIRLINE)
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "env"))
    assert dataset_file(*AIRLINE) == env
    arg = _put(tmp_path / "arg", *AIRLINE)
    assert dataset_file(*AIRLINE, data_dir=tmp_path / "arg") == arg
    assert dataset_file(*AIRLINE, data_dir=tmp_path / "empty") == env  # falls through to the next root


def test_default_cache_is_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = _put(tmp_path / "home" / ".cache" / "rnnkit", *AIRLINE)
    assert dataset_file(*AIRLINE) == path


def test_not_found_lists_places_and_fixes(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        dataset_file(*AIRLINE, data_dir=tmp_path / "d")
    message = str(err.value)
    assert str(tmp_path / "d" / "timeseries" / "airline-passengers.csv") in message
    assert str(tmp_path / "xdg" / "rnnkit" / "timeseries" / "airline-passengers.csv") in message
    for fix in ("--data-dir", "RNNKIT_DATA", "download=True"):
        assert fix in message


@needs_shared
def test_shared_data_dir_works_directly():
    assert dataset_file("ptb", "ptb.valid.txt", data_dir=SHARED) == SHARED / "ptb" / "ptb.valid.txt"


# -------------------------------------------------------------------------------------- download
@needs_shared
def test_download_from_mirror_checks_sha256(tmp_path, serve):
    base_url = serve(SHARED)
    for name, file in (AIRLINE, BABI):  # babi has no public URL, and its file is in a sub-folder
        path = dataset_file(name, file, data_dir=tmp_path / "d", download=True, base_url=base_url)
        assert path == tmp_path / "d" / name / file
        assert path.read_bytes() == (SHARED / name / file).read_bytes()
        verify(path, REGISTRY[name].files[file].sha256)
    assert sorted(p.name for p in (tmp_path / "d" / "timeseries").iterdir()) == ["airline-passengers.csv"]


@needs_shared
def test_download_into_cache_with_env_mirror(tmp_path, serve, monkeypatch):
    monkeypatch.setenv("RNNKIT_DATA_URL", serve(SHARED) + "/")
    path = dataset_file(*AIRLINE, download=True)
    assert path == tmp_path / "xdg" / "rnnkit" / "timeseries" / "airline-passengers.csv"
    assert sha256sum(path) == REGISTRY["timeseries"].files["airline-passengers.csv"].sha256


def test_download_tampered_file_fails_and_leaves_nothing(tmp_path, serve):
    _put(tmp_path / "mirror", *AIRLINE, b"Month,Passengers\n1949-01,999\n")
    dest = tmp_path / "d"
    expected = REGISTRY["timeseries"].files["airline-passengers.csv"].sha256
    with pytest.raises(ValueError, match=f"has sha256 [0-9a-f]{{64}}, expected {expected}"):
        dataset_file(*AIRLINE, data_dir=dest, download=True, base_url=serve(tmp_path / "mirror"))
    assert list((dest / "timeseries").iterdir()) == []


def test_download_http_error(tmp_path, serve):
    with pytest.raises(ConnectionError, match="could not fetch http://127.0.0.1:.*/timeseries/airline-passengers.csv"
                       ".*put the file at .*airline-passengers.csv yourself"):
        dataset_file(*AIRLINE, data_dir=tmp_path / "d", download=True, base_url=serve(tmp_path))
    assert list((tmp_path / "d" / "timeseries").iterdir()) == []


def test_cli_datasets_download_failure_is_one_line(tmp_path, serve, monkeypatch):
    """A download that cannot be fetched (here: a mirror without the file) ends `rnnkit datasets` with one
    line naming the URL and what to do, exit code 2, no traceback."""
    from typer.testing import CliRunner

    from rnnkit.cli import app
    monkeypatch.setenv("RNNKIT_DATA_URL", serve(tmp_path / "empty"))
    result = CliRunner().invoke(app, ["datasets", "--data-dir", str(tmp_path / "d"), "--download", "timeseries"])
    assert result.exit_code == 2, result.output
    assert "error: download: could not fetch http://127.0.0.1:" in result.output
    assert "Traceback" not in result.output


def test_download_without_public_url_needs_a_mirror(tmp_path):
    with pytest.raises(ValueError, match="babi/.*has no public URL; pass base_url="):
        dataset_file(*BABI, data_dir=tmp_path, download=True)


def test_verify(tmp_path):
    path = _put(tmp_path, "x", "f.txt", b"abc")
    good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    verify(path, good)
    verify(path, good.upper())
    with pytest.raises(ValueError, match=f"has sha256 {good}, expected 0+$"):
        verify(path, "0" * 64)
    with pytest.raises(FileNotFoundError, match="nope"):
        verify(tmp_path / "nope", good)
    with pytest.raises(ValueError, match="sha256: expected 64 hex digits, got 'abc'"):
        verify(path, "abc")


@needs_shared
def test_cli_datasets_download_fetches_missing_files(tmp_path, serve, monkeypatch):
    from typer.testing import CliRunner

    from rnnkit.cli import app
    monkeypatch.setenv("RNNKIT_DATA_URL", serve(SHARED))
    _put(tmp_path / "d", "timeseries", "airline-passengers.csv",
         (SHARED / "timeseries" / "airline-passengers.csv").read_bytes())
    result = CliRunner().invoke(app, ["datasets", "--data-dir", str(tmp_path / "d"), "--download", "timeseries"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("found") and line.endswith("airline-passengers.csv") for line in lines)
    assert sum(line.startswith("downloaded") for line in lines) == 3
    assert "timeseries" in result.output and "(4 of 4 files found" in result.output
    for file, spec in REGISTRY["timeseries"].files.items():
        verify(tmp_path / "d" / "timeseries" / file, spec.sha256)


def test_download_dataset_without_urls_or_mirror_says_what_to_do(tmp_path):
    from rnnkit.data.datasets import download_dataset
    with pytest.raises(ValueError, match="babi's files have no public URL; set RNNKIT_DATA_URL"):
        download_dataset("babi", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"rnnkit datasets --download ptb"):
        dataset_file("ptb", "ptb.valid.txt", data_dir=tmp_path)
