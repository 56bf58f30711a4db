"""rnnkit bench: runs every contender side by side and writes the table's figures as JSON."""

import json

import pytest
import torch

from typer.testing import CliRunner

from rnnkit.bench import main
from rnnkit.cli import app


def test_bench_writes_ratios_and_streaming(tmp_path):
    out, md = tmp_path / "speed.json", tmp_path / "speed.md"
    assert main(["--configs", "2x3x4x5", "--cells", "gru,lstm,lstm_ln", "--repeat", "1", "--threads", "1",
                 "--min-time", "0.001", "--no-jax", "--peak-gflops", "50", "--json", str(out), "--markdown", str(md)]) == 0
    table = md.read_text().splitlines()
    assert sum(line.startswith("| lstm_ln | 2, 3, 4, 5 |") for line in table) == 2  # inference, train
    assert any(line.startswith("| gru | 2, 3, 4, 5 | train | torch |") for line in table)
    report = json.loads(out.read_text())
    impls = {(r["cell"], r["mode"], r["impl"]) for r in report["rows"]}
    for cell, peer in (("gru", "torch"), ("lstm", "torch"), ("lstm_ln", "rnnkit LSTM")):
        for mode in ("inference", "train"):
            assert {(cell, mode, i) for i in (peer, "fused", "reference")} <= impls
    fused = [r for r in report["rows"] if r["impl"] == "fused"]
    assert all(r["ratio_vs_peer"] > 0 and r["median_ms"] > 0 for r in fused)
    assert set(report["summary"]) == {f"{c}/{m}" for c in ("gru", "lstm", "lstm_ln") for m in ("inference", "train")}
    assert {(s["cell"], s["H"]) for s in report["stream"]} == {(c, h) for c in ("gru", "lstm", "lstm_ln") for h in (64, 256)}
    assert all(s["layer.step_us"] > 0 and s["streamer_us"] > 0 and s["streamer_out_us"] > 0 for s in report["stream"])
    assert [line.count("|") for line in table if line.startswith("| lstm_ln | 64 |")] == [14]  # thirteen columns
    assert all(s["floor_us"] > 0 and s["floor_w_hh_us"] > 0 and s["sequence_us"] > 0 and s["new_tensor_us"] > 0
               for s in report["stream"])
    gru64 = [s for s in report["stream"] if (s["cell"], s["H"]) == ("gru", 64)]
    assert [s["floor_bytes"] for s in gru64] == [4 * (2 * 192 * 64 + 2 * 192)]  # W_ih, W_hh and both biases
    assert all("streamer_threads_us" not in s for s in report["stream"])  # --threads 1: no shared streamer
    assert all(("torch_us" in s) == (s["cell"] != "lstm_ln") for s in report["stream"])  # torch.nn has no LN cell
    assert report["gemm_gflops"] > 0 and report["gemm_gflops_end"] > 0 and report["cpu"]  # the host, its GEMM rate
    assert report["peak_gflops"] == 50 and report["peak_from"] == "--peak-gflops"
    assert all(r["peak_pct"] == pytest.approx(2 * r["gflops"]) for r in report["rows"])
    assert all(r["gemm_pct"] == pytest.approx(100 * r["gflops"] / report["gemm_gflops"]) for r in report["rows"])
    assert all(r["floor_ms"] is None and r["ratio_vs_floor"] is None for r in report["rows"])  # B = 2: no floor
    # the targets as pass/fail: worst ratio to torch.nn per judged cell and mode (not lstm_ln, whose peer is
    # rnnkit's LSTM), the streamer's µs at H = 64 and the streaming rows against the weight-read floor
    texts = [c["text"] for c in report["checks"]]
    assert sum("worst fused/torch.nn" in t for t in texts) == 4 and not any(t.startswith("lstm_ln ") and "worst" in t
                                                                            for t in texts)
    assert sum("layer.streamer()" in t and "bar <= 2.5 µs" in t for t in texts) == 3  # H = 64 of three cells
    assert sum("the weight-read floor" in t for t in texts) == 12  # streamer and a step in a call, 6 rows
    assert all(c["passed"] == (c["value"] <= c["bar"]) for c in report["checks"])
    assert sum(line.startswith("| ") and line.endswith(("| pass |", "| **fail** |")) for line in table) == len(texts)


ZEN3 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "cpu MHz": "2445.406", "flags": "fpu sse2 fma avx avx2"}


@pytest.mark.parametrize("info, lanes, ghz", [
    (ZEN3, 8, 2.445406),  # this project's Zen 3 hosts: AVX2
    (dict(ZEN3, flags="fma avx2 avx512f"), 8, 2.445406),  # Zen 4 (family 25): AVX-512 on 256-bit halves
    (dict(ZEN3, **{"cpu family": "26", "cpu MHz": "4450", "flags": "fma avx2 avx512f"}), 16, 4.45),  # Zen 5: the GUIDE's 570
    ({"vendor_id": "GenuineIntel", "cpu family": "6", "cpu MHz": "2000", "flags": "fma avx2 avx512f"}, 16, 2.0),
    (dict(ZEN3, flags="sse2"), 4, 2.445406),
])
def test_fma_peak_reckons_from_the_cpu(info, lanes, ghz):
    from rnnkit.bench import fma_peak

    peak, how = fma_peak(2, info)
    assert peak == pytest.approx(2 * 2 * lanes * 2 * ghz)
    assert f"{lanes} float32 lanes" in how and f"{ghz:.2f} GHz" in how


def test_fma_peak_unknown_without_a_clock():
    from rnnkit.bench import fma_peak

    assert fma_peak(2, {"flags": "fma avx2"}) == (None, "unknown: /proc/cpuinfo gives no clock (pass --peak-gflops)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(SystemExit, match="--device: 'cuda' requested but torch.cuda.is_available"):
        main(["--device", "cuda", "--cells", "gru", "--configs", "2x3x4x5"])


@pytest.mark.parametrize("args, message", [
    (["--configs", "4.5x10x8x16"], r"--configs: expected BxTxIxH items of integers >= 1 .*got '4.5x10x8x16'"),
    (["--configs", "4x10x8x-1"], "--configs: expected BxTxIxH items of integers >= 1"),
    (["--configs", "1x0x1x1"], "--configs: expected BxTxIxH items of integers >= 1"),
    (["--configs", "4x10x8"], "--configs: expected BxTxIxH items"),
    (["--repeat", "0"], "--repeat: expected an integer >= 1, got 0"),
    (["--threads", "0"], "--threads: expected an integer >= 1, got 0"),
    (["--min-time", "0"], "--min-time: expected a positive number of seconds"),
    (["--cells", ","], r"--cells: expected some of \['gru', "),
    (["--configs", "none", "--no-stream"], "nothing to time"),
    (["--configs", "none", "--json", "{file}/x.json"], "--json: cannot write .*: a part of its directory is a file"),
    (["--configs", "none", "--markdown", "{file}/x.md"], "--markdown: cannot write"),
])
def test_bench_refuses_bad_arguments_before_timing(args, message, tmp_path, capsys):
    """Bad arguments end the run at once (no GEMM probe, nothing printed), with a message naming the
    option, what was expected and what came; an unwritable output path too, before a long run."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit, match=message):
        main([a.replace("{file}", str(a_file)) for a in args])
    assert capsys.readouterr().out == ""


def test_bench_says_why_a_cell_without_peer_has_no_ratio(capsys):
    assert main(["--configs", "2x3x4x5", "--cells", "gru_v1", "--repeat", "1", "--threads", "1", "--min-time", "0.001",
                 "--no-stream", "--no-reference"]) == 0
    assert "gru_v1: torch.nn has no such cell, so no ratio; compare it with the reference backend (dropped by " \
           "--no-reference)" in capsys.readouterr().out


def test_bench_output_path_is_checked_without_leaving_a_file(tmp_path):
    from rnnkit.bench import check_output_path
    check_output_path("--json", str(tmp_path / "new" / "speed.json"))
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "speed.json").exists()


def test_bench_cli_passes_options_through():
    result = CliRunner().invoke(app, ["bench", "--cells", "nope"])
    assert result.exit_code != 0
    assert "--cells: unknown cell 'nope'" in str(result.exception) + result.output


def test_jax_lstm_is_the_same_lstm(tmp_path):
    """The JAX contender (run only where JAX is installed) computes what torch.nn.LSTM computes."""
    jax = pytest.importorskip("jax")
    from rnnkit.bench import jax_lstm

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 6)
    x, target = torch.randn(5, 3, 4), torch.randn(5, 3, 6)
    infer, train = jax_lstm(lstm, x, target)
    torch.testing.assert_close(torch.from_numpy(jax.device_get(infer()).copy()), lstm(x)[0].detach(),
                               atol=1e-5, rtol=1e-5)
    torch.nn.functional.mse_loss(lstm(x)[0], target).backward()
    grads = jax.device_get(train())
    torch.testing.assert_close(torch.from_numpy(grads["w_hh"].copy()), lstm.weight_hh_l0.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(grads["b"].copy()), lstm.bias_hh_l0.grad, atol=1e-6, rtol=1e-4)
    out, md = tmp_path / "speed.json", tmp_path / "speed.md"  # and in the benchmark, beside the others
    assert main(["--configs", "2x3x4x5", "--cells", "lstm", "--repeat", "1", "--threads", "1", "--min-time", "0.001",
                 "--no-stream", "--json", str(out), "--markdown", str(md)]) == 0
    report = json.loads(out.read_text())
    assert {(r["mode"], r["impl"]) for r in report["rows"]} >= {("inference", "jax"), ("train", "jax")}
    assert {"lstm/inference/jax", "lstm/train/jax"} <= set(report["summary"])
    assert "| 2, 3, 4, 5 | train |" in md.read_text()


def test_bench_configs_none_runs_only_the_streaming_rows(tmp_path):
    out = tmp_path / "stream.json"
    assert main(["--configs", "none", "--cells", "rnn", "--repeat", "1", "--no-jax", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["rows"] == [] and report["summary"] == {}
    assert {(s["cell"], s["H"]) for s in report["stream"]} == {("rnn", 64), ("rnn", 256)}
    assert all(s["streamer_us"] > 0 and s["streamer_threads_us"] > 0 for s in report["stream"])  # --threads 2
    assert torch.get_num_threads() == 2  # each sample's thread count is set and put back


def test_bench_malloc_tuned_reaches_the_benchmark_processes_only(tmp_path, monkeypatch):
    import os

    from rnnkit.bench import TUNED_MALLOC, environment, in_fresh_process
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with environment(TUNED_MALLOC):
        assert in_fresh_process(1, os.getenv, "MALLOC_TRIM_THRESHOLD_") == TUNED_MALLOC["MALLOC_TRIM_THRESHOLD_"]
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    out = tmp_path / "speed.json"
    assert main(["--configs", "2x3x4x5", "--cells", "rnn", "--repeat", "1", "--threads", "1", "--min-time", "0.001",
                 "--no-stream", "--no-reference", "--malloc", "tuned", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["malloc"] == "tuned"
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ


def _run_benchmark_script(name: str, *args: str) -> list[str]:
    """The lines benchmarks/<name> prints, run in a fresh process with args."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / name
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                          check=True)
    return done.stdout.splitlines()


def test_stream_units_benchmark_runs():
    """benchmarks/stream_units.py (the units split against one thread and torch.nn's cell) runs and
    prints a ratio per row and the generation loop's."""
    lines = _run_benchmark_script("stream_units.py", "--hidden", "8", "--layers", "1,2", "--cells", "lstm,gru",
                                  "--rounds", "1", "--vocab", "10", "--threads", "2", "--calls", "50")
    assert sum("split / one" in line for line in lines) == 5  # four rows and the generation loop
    assert sum("split / cell" in line for line in lines) == 2  # one layer: torch.nn's cell beside


def test_stream_floor_benchmark_runs():
    """benchmarks/stream_floor.py takes a streaming call apart: per cell and size the whole call, its
    fixed costs, the step alone, and one read of the step's weights (the floor) with the rates at
    which the step and that read go through them (positive figures; their order is the host's)."""
    import re
    lines = _run_benchmark_script("stream_floor.py", "--hidden", "8,16", "--cells", "lstm,gru", "--rounds", "1",
                                  "--calls", "20")
    rows = [line for line in lines if " call " in line and "fixed " in line and "H=" in line]
    assert [line.split()[:2] for line in rows] == [["lstm", "H=8"], ["lstm", "H=16"], ["gru", "H=8"], ["gru", "H=16"]]
    for line in rows:
        figures = [float(re.search(rf"{key}\s+([0-9.]+)", line).group(1)) for key in ("call", "fixed", "step", "entry")]
        assert all(v > 0 for v in figures)
    floors = [line for line in lines if line.strip().startswith("floor")]
    assert len(floors) == 4 and all(float(re.search(r"floor ([0-9.]+) µs", line).group(1)) > 0 for line in floors)


def test_read_floor_reads_every_weight_each_pass():
    """The weight-read floor's loop reads the whole buffer on every pass (its result is the sum of
    every element times the passes), and a buffer of the step's weights has their bytes."""
    import numpy as np

    from rnnkit.bench import CELLS, read_floor, read_passes, step_weights
    a = np.arange(1, 1001, dtype=np.float32)
    assert read_passes(a, 3) == pytest.approx(3 * a.sum())
    assert read_passes(a, 0) == 0
    assert read_floor(4 * 1000, 7)() == pytest.approx(7 * 1000)  # a buffer of ones: 1000 floats, 7 passes
    # a whole-sequence step reads W_hh; a streaming step every weight of the layer
    assert step_weights("lstm", 32, 64, streaming=False) == 4 * (256 * 64)
    assert step_weights("lstm", 32, 64, streaming=True) == 4 * (256 * 64 + 256 * 32 + 2 * 256)
    assert step_weights("rnn", 64, 64, streaming=True) == 4 * (64 * 64 * 2 + 2 * 64)
    assert step_weights("lstm_ln", 8, 8, streaming=True) == 4 * (32 * 8 * 2 + 2 * 32 + 80)
    for cell in ("rnn", "lstm", "gru", "lstm_ln"):  # a streaming step reads every parameter of the layer
        layer = CELLS[cell][0](32, 64, **CELLS[cell][2])
        assert step_weights(cell, 32, 64, streaming=True) == sum(p.numel() * 4 for p in layer.parameters())


def test_batch1_rows_carry_the_weight_read_floor(tmp_path):
    """A batch-1 row is timed beside T reads of W_hh (2T in training: forward and backward), and its
    ratio to that floor is the row's time over it; the table and the targets show it."""
    out, md = tmp_path / "b1.json", tmp_path / "b1.md"
    assert main(["--configs", "1x20x4x8", "--cells", "rnn", "--repeat", "1", "--threads", "1", "--min-time", "0.001",
                 "--no-stream", "--no-reference", "--json", str(out), "--markdown", str(md)]) == 0
    report = json.loads(out.read_text())
    fused = {r["mode"]: r for r in report["rows"] if r["impl"] == "fused"}
    assert {r["impl"] for r in report["rows"]} == {"fused", "torch"}  # the floor is a column, not a contender
    for r in fused.values():
        assert r["floor_ms"] > 0 and r["ratio_vs_floor"] == pytest.approx(r["median_ms"] / r["floor_ms"])
    texts = [c["text"] for c in report["checks"]]
    assert sum("1,20,4,8" in t and "weight-read floor" in t for t in texts) == 2
    assert "| rnn | 1, 20, 4, 8 | inference | torch |" in md.read_text()


def test_checks_judge_the_large_shapes_against_the_gemm_rate():
    """GEMM_BARS: the large shapes' rows are judged by their share of the host's GEMM rate, against 85%
    (256, 50, 256, 512) and 75% (64, 100, 128, 256); other shapes are not. The worst ratio to torch.nn
    of a cell and mode is judged against 1.03 and names its configuration."""
    from rnnkit.bench import checks

    def row(cfg, pct, ratio=1.0):
        B, T, I, H = cfg
        return {"cell": "gru", "mode": "train", "impl": "fused", "peer": "torch", "B": B, "T": T, "I": I, "H": H,
                "gemm_pct": pct, "ratio_vs_peer": ratio, "ratio_vs_floor": None, "floor_ms": None}
    got = checks([row((256, 50, 256, 512), 84.9), row((64, 100, 128, 256), 75.0, 1.04), row((32, 200, 64, 128), 10.0)],
                 [], "fused")
    by_shape = {c["text"].split(":")[0].split()[-1]: c for c in got if "GEMM" in c["text"]}
    assert set(by_shape) == {"256,50,256,512", "64,100,128,256"}
    assert not by_shape["256,50,256,512"]["passed"] and by_shape["64,100,128,256"]["passed"]
    worst = [c for c in got if "worst" in c["text"]]
    assert len(worst) == 1 and not worst[0]["passed"] and "1.04 (at 64,100,128,256)" in worst[0]["text"]
