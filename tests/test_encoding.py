"""Text encodings: every reader decodes through rnnkit.data.text.decode_text — a named codec or "auto"
(byte-order marks, UTF-16/32 without one, legacy code pages), control characters refused unless
allowed, decoding errors that name the file, line, byte and the key or flag that fixes them, counted
replacement — and the data configs' and CLI commands' encoding options reach it."""

from __future__ import annotations

import codecs
import gzip
import random
import re
import warnings

import pytest
import torch
from typer.testing import CliRunner

from rnnkit import tasks
from rnnkit.cli import app
from rnnkit.data.babi import read_babi
from rnnkit.data.classification import read_folder, read_table
from rnnkit.data.series import read_csv
from rnnkit.data.text import decode_text, read_corpus, read_text
from rnnkit.model import ModelConfig
from rnnkit.tasks.classifier import ClassifierDataConfig, ClassifierExperiment
from rnnkit.tasks.language_model import LMDataConfig, LMExperiment
from rnnkit.train import TrainConfig

torch.set_num_threads(1)

TEXT = ("The café’s “crème brûlée” costs 5€ — naïve señor, déjà vu.\n"
        "Second line: the Ærø ferry, straße and smørrebrød.\n") * 3
SHORT = "I loved it — “great” film, très bon.\n"


def auto_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "encoding 'auto'" in str(w.message)]


# ------------------------------------------------------------------------------- auto-detection
@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_without_bom_are_detected(tmp_path, codec):
    path = tmp_path / "corpus.txt"
    path.write_bytes(TEXT.encode(codec))
    with pytest.warns(UserWarning) as record:
        assert read_text(path, "auto") == TEXT
    assert auto_warnings(record) == [f"{path}: encoding 'auto' read {codec} (zero-byte pattern, no byte-order mark)"]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_in_other_scripts(codec):
    russian = "Съешь же ещё этих мягких французских булок, да выпей чаю.\nМосква — столица России.\n"
    chinese = "你好，世界。这是一个测试文件。\n第二行。\n"  # hardly a zero byte: charset-normalizer's part
    for text, how in ((russian, "zero-byte pattern, no byte-order mark"), (chinese, "charset-normalizer")):
        assert decode_text(text.encode(codec), "x.txt", "auto") == (text, codec, how, 0)


@pytest.mark.parametrize("codec, chosen", [("utf-16", "utf-16"), ("utf-32", "utf-32"), ("utf-8-sig", "utf-8-sig")])
def test_byte_order_marks_are_detected_and_dropped(tmp_path, codec, chosen):
    path = tmp_path / "bom.txt"
    path.write_bytes(TEXT.encode(codec))  # Python's utf-16/utf-32/utf-8-sig write a BOM
    assert path.read_bytes()[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF8[:2])
    with pytest.warns(UserWarning, match=re.escape(f"read {chosen} (byte-order mark)")):
        text = read_text(path, "auto")
    assert text == TEXT and not text.startswith("\ufeff")


def test_utf16_with_bom_by_name(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(TEXT.encode("utf-16"))
    assert read_text(path, "utf-16") == TEXT


def test_utf8_bom_is_dropped_by_default(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM: the header's first column must still be found."""
    path = tmp_path / "excel.tsv"
    path.write_bytes(codecs.BOM_UTF8 + "sentence\tlabel\ncrème brûlée\t1\nplain\t0\n".encode())
    data = read_table(path)
    assert data.texts == ["crème brûlée", "plain"] and data.labels == ["1", "0"]


def test_valid_utf8_under_auto_says_so(tmp_path):
    path = tmp_path / "u.txt"
    path.write_text(TEXT, encoding="utf-8")
    with pytest.warns(UserWarning, match="read utf-8 \\(valid UTF-8\\)"):
        assert read_text(path, "auto") == TEXT


def test_cp1252_by_name_and_by_auto(tmp_path):
    for i, text in enumerate((TEXT, SHORT)):
        path = tmp_path / f"legacy{i}.txt"
        path.write_bytes(text.encode("cp1252"))
        assert read_text(path, "cp1252") == text
        with pytest.warns(UserWarning) as record:
            assert read_text(path, "auto") == text
        (message,) = auto_warnings(record)
        assert message.startswith(f"{path}: encoding 'auto' read cp1252 (charset-normalizer")
        with pytest.raises(ValueError, match="is not valid utf-8"):
            read_text(path)


def test_other_code_pages_are_not_taken_for_cp1252():
    for codec, text in (("cp1251", "Съешь же ещё этих мягких французских булок, да выпей чаю.\n"),
                        ("cp1250", "Zażółć gęślą jaźń. Łódź jest dużym miastem, a Kraków jest piękny.\n")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoded = decode_text(text.encode(codec), "x.txt", "auto")
        assert (decoded.encoding, decoded.text) == (codec, text)


def test_unknown_encoding_names_the_argument_and_the_config_key(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("abc")
    with pytest.raises(ValueError, match="encoding: expected a codec name .* got 'latin-9000'"):
        read_text(path, "latin-9000")
    with pytest.raises(ValueError, match="x.toml: data.encoding: expected a codec name .* got 'latin-9000'"):
        ClassifierExperiment.from_dict({"data": {"encoding": "latin-9000"}}, "x.toml")
    assert ClassifierExperiment.from_dict({"data": {"encoding": "auto"}}).data.encoding == "auto"


# ---------------------------------------------------------------------------- control characters
def test_nul_bytes_are_refused_with_file_line_and_offset(tmp_path):
    path = tmp_path / "nul.txt"
    path.write_bytes(b"first line\nsecond\r\nthi\x00rd\n")
    with pytest.raises(ValueError) as error:
        read_text(path)
    message = str(error.value)
    assert message.startswith(f"{path}: line 3, byte offset 22: U+0000 (NUL)")
    assert "data.allow_control_chars = true" in message and "--allow-control-chars" in message
    assert read_text(path, allow_control_chars=True) == "first line\nsecond\nthi\x00rd\n"


def test_utf16_read_as_utf8_is_refused_and_recognised(tmp_path):
    path = tmp_path / "wide.txt"
    path.write_bytes("the cat sat\n".encode("utf-16-le"))
    with pytest.raises(ValueError, match=r"line 1, byte offset 1: U\+0000 \(NUL\).*looks like utf-16-le"):
        read_corpus(path)


def test_other_control_characters_refused_tab_and_form_feed_kept(tmp_path):
    path = tmp_path / "esc.txt"
    path.write_bytes("tab\there\x0cpage\néé\x1b[0m\n".encode())
    with pytest.raises(ValueError, match=r"line 2, byte offset 18: U\+001B \(ESC\)"):
        read_text(path)
    path.write_bytes(b"tab\there\x0cpage\n")
    assert read_text(path) == "tab\there\x0cpage\n"


# ------------------------------------------------------------------------- errors and replacement
def test_decoding_error_names_file_line_byte_and_the_fix(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes("ok\nalso ok\ncaf".encode() + b"\xe9 au lait\n")
    with pytest.raises(ValueError) as error:
        read_text(path)
    message = str(error.value)
    assert f"{path} is not valid utf-8: byte 0xe9 at byte offset 14, line 3" in message
    for fix in ("data.encoding", "--encoding", 'data.encoding_errors = "replace"', "--encoding-errors replace"):
        assert fix in message
    assert "errors=" not in message  # no Python argument in advice to users of the CLI and configs


def test_gzip_errors_say_decompressed(tmp_path):
    path = tmp_path / "bad.txt.gz"
    path.write_bytes(gzip.compress(b"abc\xffdef"))
    with pytest.raises(ValueError, match=r"bad\.txt\.gz \(decompressed\) is not valid utf-8: byte 0xff at "
                                         r"byte offset 3"):
        read_text(path)
    path.write_bytes(gzip.compress(SHORT.encode("cp1252")))
    assert read_text(path, "cp1252") == SHORT


def test_replacement_counts_the_bytes(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ab\xff\xfecd\ne\xe9\n")
    with pytest.warns(UserWarning, match=re.escape(f"{path}: replaced 3 undecodable byte(s) with U+FFFD")):
        assert read_text(path, errors="replace") == "ab\ufffd\ufffdcd\ne\ufffd\n"
    assert decode_text(b"\xff\xff\xff\xffok", "x", errors="replace").replaced == 4
    good = tmp_path / "good.txt"
    good.write_text("fine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing replaced, nothing said
        assert read_text(good, errors="replace") == "fine"


# ------------------------------------------------------------------------------ every reader
def test_every_reader_takes_the_encoding(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_bytes("sentence\tlabel\ntrès bon\t1\n".encode("utf-16"))
    with pytest.warns(UserWarning, match="t.tsv: encoding 'auto' read utf-16 \\(byte-order mark\\)"):
        assert read_table(table, encoding="auto").texts == ["très bon"]
    folder = tmp_path / "folder"
    for label, words in (("neg", "mauvais"), ("pos", "très bon")):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            (folder / label / f"{i}.txt").write_bytes(f"{words} “{i}”".encode("cp1252"))
    with pytest.warns(UserWarning) as record:
        data = read_folder(folder, encoding="auto")
    assert data.texts[3] == "très bon “0”"
    assert auto_warnings(record) == [f"{folder}: encoding 'auto' read cp1252 (charset-normalizer, Windows-1252 "
                                     "among its equals) for 6 files"]  # one line for the folder
    babi = tmp_path / "qa.txt"
    babi.write_bytes("1 Zoë went to the café.\n2 Where is Zoë?\tcafé\t1\n".encode("cp1252"))
    assert read_babi(babi, "cp1252")[0].answer == "café"
    series = tmp_path / "s.csv"
    series.write_bytes("date,valeur €\n2020-01-01,1\n2020-02-01,2\n".encode("utf-16"))
    assert list(read_csv(series, encoding="utf-16").columns) == ["date", "valeur €"]
    series.write_bytes("date,v\n2020-01-01,1\n".encode("utf-16-le"))
    with pytest.raises(ValueError, match="U\\+0000 \\(NUL\\).*looks like utf-16-le"):
        read_csv(series)
    with pytest.warns(UserWarning, match="s.csv: encoding 'auto' read utf-16-le"):
        assert read_csv(series, encoding="auto")["v"].tolist() == [1]


# --------------------------------------------------------------------------- configs and CLI
# reviews in the manner of Pang & Lee's sentence-polarity set (English, cp1252, a few accents and quotes)
POS, NEG = ["superb", "touching", "clever"], ["tedious", "bland", "clumsy"]
FILLER = ["the", "film", "is", "a", "plot", "and", "naïve", "café", "cliché", "—", "“fun”"]


def rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(2)
        words = rng.choices(FILLER, k=rng.randint(2, 6))
        words.insert(rng.randrange(len(words) + 1), rng.choice([NEG, POS][label]))
        out.append((" ".join(words), str(label)))
    return out


def write_cp1252(path, table):
    path.write_bytes(("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in table)).encode("cp1252"))
    return path


@pytest.fixture(scope="module")
def cp1252_classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("cp1252")
    train, dev = write_cp1252(root / "train.tsv", rows(160, 0)), write_cp1252(root / "dev.tsv", rows(40, 1))
    experiment = ClassifierExperiment(
        data=ClassifierDataConfig(train=str(train), valid=str(dev), batch_size=16, encoding="cp1252"),
        model=ModelConfig(cell="gru", embedding_dim=8, hidden_size=8, bidirectional=True, pooling="max",
                          padding_idx=0),
        train=TrainConfig(epochs=3, lr=2e-2, monitor="val_accuracy", monitor_mode="max", log_every=1000))
    return experiment, tasks.fit(experiment, root / "run"), root


def test_classifier_config_encoding_trains_on_cp1252(cp1252_classifier):
    experiment, clf, root = cp1252_classifier
    assert {"naïve", "café", "cliché", "—", "“fun”"} <= set(clf.vocab.tokens)
    assert clf.results["val_accuracy"] > 0.8
    with pytest.raises(ValueError, match="train.tsv is not valid utf-8: byte 0x93 at byte offset 19, line 2 "
                                         ".*data.encoding"):
        tasks.fit(experiment.model_copy(update={"data": experiment.data.model_copy(update={"encoding": "utf-8"})}),
                  root / "utf8")


def test_language_model_config_encoding(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(("le café était très bon\nle thé était déjà froid\n" * 40).encode("cp1252"))
    experiment = LMExperiment(data=LMDataConfig(train=str(corpus), encoding="cp1252", batch_size=4, bptt=5),
                              model=ModelConfig(cell="gru", embedding_dim=8, hidden_size=8),
                              train=TrainConfig(epochs=1, lr=0.5, log_every=1000))
    lm = tasks.fit(experiment, tmp_path / "run")
    assert {"café", "très", "thé", "déjà"} <= set(lm.vocab.tokens)
    assert lm.evaluate(corpus, encoding="cp1252")["tokens"] > 0
    runner, best = CliRunner(), str(tmp_path / "run" / "best")
    result = runner.invoke(app, ["evaluate", best, "--data", str(corpus), "--encoding", "cp1252"])
    assert result.exit_code == 0 and result.output.startswith("ppl ")
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes("le café était\n".encode("cp1252"))
    result = runner.invoke(app, ["generate", best, "--prompt-file", str(prompt), "--encoding", "cp1252"])
    assert result.exit_code == 0 and "unknown" not in result.output and len(result.output.splitlines()) == 5
    assert result.output.splitlines()[0].split()[1] == "très"  # "le café était" is followed by "très"
    result = runner.invoke(app, ["generate", best, "--prompt-file", str(prompt)])
    assert result.exit_code == 2 and "prompt.txt is not valid utf-8" in result.output
    result = runner.invoke(app, ["generate", best, "--prompt-file", str(prompt), "--prompt", "le"])
    assert result.exit_code == 2 and "either --prompt or --prompt-file" in result.output


def test_cli_encoding_options(cp1252_classifier, tmp_path):
    _, _, root = cp1252_classifier
    runner, best = CliRunner(), str(root / "run" / "best")
    result = runner.invoke(app, ["evaluate", best, "--data", str(root / "dev.tsv")])
    assert result.exit_code == 2 and "dev.tsv is not valid utf-8: byte 0x" in result.output
    assert "--encoding" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["evaluate", best, "--data", str(root / "dev.tsv"), "--encoding", "cp1252"])
    assert result.exit_code == 0 and '"accuracy"' in result.output
    result = runner.invoke(app, ["evaluate", best, "--data", str(root / "dev.tsv"), "--encoding", "auto"])
    assert result.exit_code == 0 and "encoding 'auto' read cp1252" in result.output
    out = tmp_path / "pred.tsv"
    args = ["predict", best, "--input", str(root / "dev.tsv"), "--output", str(out)]
    assert runner.invoke(app, args).exit_code == 2
    result = runner.invoke(app, args + ["--encoding", "cp1252"])
    assert result.exit_code == 0 and "café" in out.read_text(encoding="utf-8")
    result = runner.invoke(app, args + ["--encoding", "klingon"])
    assert result.exit_code == 2 and "--encoding: expected a codec name" in result.output
    result = runner.invoke(app, args + ["--encoding-errors", "ignore"])
    assert result.exit_code == 2 and "--encoding-errors: expected 'strict' or 'replace'" in result.output
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"le film\x00 \xe9tait tr\xe8s\n")
    args = ["predict", best, "--input", str(nul), "--output", str(out), "--encoding", "cp1252"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "line 1, byte offset 7: U+0000 (NUL)" in result.output
    assert runner.invoke(app, args + ["--allow-control-chars"]).exit_code == 0


def test_cli_answer_takes_the_encoding_flags(tmp_path):
    story = tmp_path / "story.txt"
    story.write_bytes("Zoë went to the café.\n".encode("cp1252"))
    args = ["answer", str(tmp_path / "no-checkpoint"), "--story", str(story), "--question", "Where is Zoë?"]
    result = CliRunner().invoke(app, args + ["--encoding", "klingon"])
    assert result.exit_code == 2 and "--encoding: expected a codec name" in result.output
    result = CliRunner().invoke(app, args + ["--encoding", "cp1252", "--encoding-errors", "ignore"])
    assert result.exit_code == 2 and "--encoding-errors: expected 'strict' or 'replace'" in result.output


def test_forecaster_config_encoding_reads_its_csv(tmp_path):
    from rnnkit.tasks.forecasting import Forecaster, ForecastExperiment
    n = 60
    dates = [f"{2010 + i // 12}-{1 + i % 12:02d}-01" for i in range(n)]
    path = tmp_path / "ventes.csv"
    path.write_bytes(("date,chiffre d'affaires (€)\n" + "".join(f"{d},{100 + i + (i % 12) * 2}\n"
                                                                   for i, d in enumerate(dates))).encode("utf-16"))
    experiment = ForecastExperiment.from_dict({
        "data": {"path": str(path), "encoding": "auto", "target_columns": ["chiffre d'affaires (€)"],
                 "lookback": 12, "horizon": 3, "test": 6},
        "model": {"cell": "gru", "hidden_size": 4}, "train": {"epochs": 1, "log_every": 10_000},
        "evaluate": {"season": 12, "statistical": "none"}})
    with pytest.warns(UserWarning, match="ventes.csv: encoding 'auto' read utf-16 \\(byte-order mark\\)"):
        fc = Forecaster.fit(experiment)
    assert fc.experiment.data.target_columns == ["chiffre d'affaires (€)"]
    with pytest.raises(ValueError, match="ventes.csv: line 1, byte offset 3: U\\+0000 \\(NUL\\).*looks like utf-16"):
        latin = experiment.data.model_copy(update={"encoding": "latin-1"})
        Forecaster.fit(experiment.model_copy(update={"data": latin}))


def test_qa_config_encoding_and_the_answer_and_evaluate_flags(tmp_path):
    from rnnkit.tasks.qa import QADataConfig, QAExperiment, QAModelConfig
    rng, lines = random.Random(0), []
    people, places = ["Zoë", "José", "Chloé"], ["café", "théâtre", "garden"]
    for _ in range(40):
        person, place = rng.choice(people), rng.choice(places)
        lines += [f"1 {person} went to the {place}.", f"2 Where is {person}? \t{place}\t1"]
    for name in ("train.txt", "test.txt"):
        (tmp_path / name).write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
    experiment = QAExperiment(
        data=QADataConfig(dataset="", train=str(tmp_path / "train.txt"), encoding="cp1252", batch_size=8),
        model=QAModelConfig(embedding_dim=8, hidden_size=8, hops=1, memory_size=4),
        train=TrainConfig(epochs=2, lr=1e-2, log_every=1000))
    qa = tasks.fit(experiment, tmp_path / "run")
    assert {"zoë", "josé", "chloé", "café", "théâtre"} <= set(qa.vocab.tokens)
    story = tmp_path / "story.txt"
    story.write_bytes("Chloé went to the théâtre.\n".encode("cp1252"))
    runner, best = CliRunner(), str(tmp_path / "run" / "best")
    args = ["answer", best, "--story", str(story), "--question", "Where is Chloé?"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "story.txt is not valid utf-8: byte 0xe9 at byte offset 4, line 1" in result.output
    result = runner.invoke(app, args + ["--encoding", "cp1252"])
    assert result.exit_code == 0 and "unknown" not in result.output and "chloé went to the théâtre" in result.output
    result = runner.invoke(app, ["evaluate", best, "--data", str(tmp_path / "test.txt"), "--encoding", "auto"])
    assert result.exit_code == 0 and "encoding 'auto' read cp1252" in result.output and '"n": 40' in result.output


def test_cli_train_takes_the_encoding_flags(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(("le café était très bon\nle thé était déjà froid\n" * 40).encode("cp1252"))
    config = tmp_path / "lm.toml"
    config.write_text(f'task = "language_model"\n[data]\ntrain = "{corpus}"\nbatch_size = 4\nbptt = 5\n'
                      '[model]\ncell = "gru"\nembedding_dim = 8\nhidden_size = 8\nnum_layers = 1\n'
                      '[train]\nepochs = 1\nlog_every = 1000\n')
    runner, args = CliRunner(), ["train", str(config), "--out", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "corpus.txt is not valid utf-8" in result.output
    assert "--encoding" in result.output
    result = runner.invoke(app, args + ["--encoding", "cp1252"])
    assert result.exit_code == 0, result.output
    assert "café" in tasks.load(tmp_path / "run" / "best").vocab.tokens
    result = runner.invoke(app, args + ["--encoding", "utf-8", "--encoding-errors", "replace"])
    assert result.exit_code == 0 and "replaced" in result.output
