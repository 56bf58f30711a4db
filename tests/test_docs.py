"""The documentation: the site builds in strict mode, every Python example in README.md, docs/ and the
docstrings runs, and every `rnnkit` command line shown there names a command and options that exist.

Examples are collected with sybil: each ```python fence of a page runs, in order, in one namespace per
page (an example may use what an earlier one on the page defined), in a fresh working directory. An
example that needs a registered data set or a long run is marked on the line before its fence with
``<!-- skip: next "why" -->``; it is reported as skipped with that reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PYTHON_FENCE = re.compile(r"^```python\s*$", re.MULTILINE)

import sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser


def _mkdocs(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


# ----------------------------------------------------------------------------------- the site
def test_site_builds_in_strict_mode(tmp_path):
    """`mkdocs build --strict` (what `make docs` runs): a broken link, a missing page in the nav or an
    API reference that does not resolve is a warning, and strict mode fails on any warning."""
    result = _mkdocs("--strict", "--site-dir", str(tmp_path / "site"), cwd=ROOT)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    for page in ("index.html", "layers/index.html", "classification/index.html", "performance/index.html",
                 "api/layers/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "api" / "layers" / "index.html").read_text(encoding="utf-8")
    assert "rnnkit.layers.recurrent.LSTM" in api  # the reference was generated from the docstrings
    assert "&lt;float&gt;[T, B, I]" in api and "<float>" not in api  # shapes shown, not hidden as tags


@pytest.mark.parametrize("page, error", [
    ("See [the guide](missing.md).", "missing.md"),
    ("::: rnnkit.no_such_module", "rnnkit.no_such_module"),
])
def test_strict_mode_fails_on_a_broken_reference(tmp_path, page, error):
    """The check above can fail: the project's own settings reject a link to a missing page and an
    API reference to a module that does not exist."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(f"# Page\n\n{page}\n", encoding="utf-8")
    for helper in (ROOT / "docs").glob("*.py"):  # the hook and the griffe extension mkdocs.yml names
        shutil.copy(helper, tmp_path / "docs" / helper.name)
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    config = config.split("\nnav:")[0].replace("paths: [.]", f"paths: [{ROOT}]")
    (tmp_path / "mkdocs.yml").write_text(config, encoding="utf-8")
    result = _mkdocs("--strict", cwd=tmp_path)
    assert result.returncode != 0
    assert error in result.stderr


def test_readme_is_a_front_page():
    """Under 300 lines; its prose (code aside) holds no dates, run histories or references to issues."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 300
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    for pattern in (r"\b20\d\d-\d\d-\d\d\b", r"\bissue \d+", r"\bGUIDE\b", r"\bsession\b"):
        assert not re.search(pattern, prose, flags=re.IGNORECASE), pattern


# ------------------------------------------------------------------------------ Python examples
def _examples(page: Path):
    collector = sybil.Sybil(parsers=[PythonCodeBlockParser(), SkipParser()])
    return list(collector.parse(page))


@pytest.mark.parametrize("page", [p for p in PAGES if PYTHON_FENCE.search(p.read_text(encoding="utf-8"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    examples = _examples(page)
    code = [e for e in examples if not isinstance(e.parsed, tuple)]  # skip directives parse to tuples
    assert len(code) == len(PYTHON_FENCE.findall(page.read_text(encoding="utf-8"))), \
        "every ```python fence is collected"
    skipped = []
    for example in examples:
        try:
            example.evaluate()
        except unittest.SkipTest as reason:
            skipped.append(f"line {example.line}: {reason}")
        except Exception as error:
            raise AssertionError(f"{page.relative_to(ROOT)}, the example at line {example.line} failed: "
                                 f"{type(error).__name__}: {error}") from error
    if skipped:
        print(f"{page.relative_to(ROOT)}: skipped examples: " + "; ".join(skipped))


def test_a_failing_example_fails(tmp_path):
    """The collector runs the code: an example that raises is reported, one after a skip marker is not."""
    page = tmp_path / "page.md"
    page.write_text("```python\nx = 1\n```\n\n<!-- skip: next \"needs a data set\" -->\n```python\n"
                    "raise RuntimeError('skipped')\n```\n\n```python\nassert x == 2, 'ran'\n```\n",
                    encoding="utf-8")
    examples = _examples(page)
    examples[0].evaluate()
    examples[1].evaluate()  # the skip directive itself
    with pytest.raises(unittest.SkipTest, match="needs a data set"):
        examples[2].evaluate()
    with pytest.raises(AssertionError, match="ran"):
        examples[3].evaluate()


# ------------------------------------------------------------------------ docstring examples
def _modules_with_doctests() -> list[str]:
    """Every rnnkit module whose docstrings hold ``>>>`` examples (the API reference shows them)."""
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "rnnkit").rglob("*.py")
                  if ">>>" in p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("module", _modules_with_doctests())
def test_docstring_examples_run(module):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{module}: {result.failed} of {result.attempted} docstring examples failed"


# ----------------------------------------------------------------------------- command lines
_COMMAND = re.compile(r"^\s*(rnnkit [^\n`#]*)", re.MULTILINE)
_INLINE = re.compile(r"`(rnnkit [^`]+)`")
_SHELL_FENCE = re.compile(r"^```(?:sh|bash|shell)\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _command_lines() -> list[tuple[str, str]]:
    """(page, command line) for every `rnnkit ...` line of a shell fence and every inline `rnnkit ...`."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for fence in _SHELL_FENCE.findall(text):
            fence = fence.replace("\\\n", " ")
            found += [(page.name, m.strip()) for m in _COMMAND.findall(fence)]
        found += [(page.name, m.strip()) for m in _INLINE.findall(text)]
    return found


def _bench_help() -> str:
    import contextlib
    import io

    from rnnkit.bench import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"], prog="rnnkit bench")
    return out.getvalue()


def test_command_lines_name_real_commands_and_options():
    """The CLI examples are not run (they need data and time), but each names an `rnnkit` command that
    exists and only options that command takes."""
    import typer.main

    from rnnkit.cli import app
    group = typer.main.get_command(app)
    lines = _command_lines()
    assert len(lines) > 20
    wrong = []
    for page, line in lines:
        words = shlex.split(line.replace("...", ""))
        if len(words) < 2 or words[1].startswith("-") or words[1].isupper():
            continue  # `rnnkit --help`, `rnnkit COMMAND --help`
        command = group.commands.get(words[1])
        if command is None:
            wrong.append(f"{page}: {line}: no command {words[1]!r}")
            continue
        if words[1] == "bench":  # its options belong to rnnkit.bench's own parser: read its --help
            known = set(re.findall(r"--[\w-]+", _bench_help()))
        else:
            known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for word in words[2:]:
            option = word.split("=", 1)[0]
            if option.startswith("--") and option not in known:
                wrong.append(f"{page}: {line}: {words[1]} has no option {option}")
    assert not wrong, "\n".join(wrong)


_SCRIPT = re.compile(r"python (benchmarks/\w+\.py)((?: +--?[\w-]+(?:[ =][^ `\-][^ `]*)?)*)")


def test_benchmark_script_lines_name_real_options():
    """`python benchmarks/X.py --option ...` lines name scripts that exist and options their --help lists."""
    uses: dict[str, set[str]] = {}
    for page in PAGES:
        for script, args in _SCRIPT.findall(page.read_text(encoding="utf-8")):
            uses.setdefault(script, set()).update(re.findall(r"--[\w-]+", args))
    assert uses, "the docs show benchmark scripts"
    wrong = []
    for script, options in sorted(uses.items()):
        if not (ROOT / script).is_file():
            wrong.append(f"{script}: no such script")
            continue
        if not options:
            continue
        result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            wrong.append(f"{script} --help failed: {result.stderr[-1000:]}")
            continue
        known = set(re.findall(r"--[\w-]+", result.stdout))
        wrong += [f"{script}: no option {o}" for o in sorted(options - known)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_has_a_docs_target():
    result = subprocess.run(["make", "-n", "docs"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "MAKEFLAGS": ""})
    assert result.returncode == 0, result.stderr
    assert "mkdocs build --strict" in result.stdout
