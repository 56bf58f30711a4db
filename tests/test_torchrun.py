"""rnnkit started the way multi-process PyTorch jobs are started: `torchrun` on one machine and on two
(simulated here by two torchrun agents and a c10d rendezvous), SLURM's srun environment, and an
elastic restart after a worker dies. Each run is compared with one process on the same global batch:
the items and loss of every step (metrics.jsonl), the final weights, and one result JSON (rank 0's).

CPU, gloo, tiny models and data made here; every run is a few seconds of training.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rnnkit import tasks

pytestmark = pytest.mark.slow  # about 20 processes, each importing torch and rnnkit: minutes on 2 cores

TASKS = ("language_model", "classifier", "qa", "forecaster")
TIMEOUT = 240  # seconds a launcher may take before the test fails (a hung rendezvous, not a slow host)
WORDS = ["the", "cat", "dog", "bird", "is", "are", "small", "loud", "big", "cute", "a", "and"]
PEOPLE, PLACES = ["mary", "john", "sandra"], ["kitchen", "garden", "office", "hallway"]


# ------------------------------------------------------------------------------------------ data
def lm_files(root: Path) -> str:
    rng = random.Random(0)
    (root / "train.txt").write_text(" ".join(rng.choices(WORDS, k=400)) + "\n")  # 4 streams: 9 steps an epoch
    (root / "valid.txt").write_text(" ".join(rng.choices(WORDS, k=120)) + "\n")
    return f'''task = "language_model"
[data]
train = "{root / 'train.txt'}"
valid = "{root / 'valid.txt'}"
batch_size = 4
eval_batch_size = 2
bptt = 10
[model]
cell = "lstm"
embedding_dim = 8
hidden_size = 8
'''


def classifier_files(root: Path) -> str:
    rng = random.Random(1)

    def table(n: int) -> str:
        rows = []
        for _ in range(n):
            label = rng.randrange(2)
            words = rng.choices(WORDS, k=rng.randint(2, 8)) + [("good", "bad")[label]]
            rng.shuffle(words)
            rows.append(f"{' '.join(words)}\t{label}\n")
        return "sentence\tlabel\n" + "".join(rows)

    (root / "train.tsv").write_text(table(48))
    (root / "valid.tsv").write_text(table(16))
    return f'''task = "classifier"
[data]
train = "{root / 'train.tsv'}"
valid = "{root / 'valid.tsv'}"
batch_size = 8
bucket_pool = 2
[model]
cell = "gru"
embedding_dim = 8
hidden_size = 8
dropout = 0.0
'''


def qa_files(root: Path) -> str:
    rng = random.Random(2)

    def stories(n: int) -> str:
        lines = []
        for _ in range(n):
            where, k = {}, 0
            for k in range(1, rng.randint(2, 3) + 1):
                person, place = rng.choice(PEOPLE), rng.choice(PLACES)
                where[person] = (place, k)
                lines.append(f"{k} {person.capitalize()} went to the {place}.")
            person = rng.choice(sorted(where))
            lines.append(f"{k + 1} Where is {person.capitalize()}? \t{where[person][0]}\t{where[person][1]}")
        return "\n".join(lines) + "\n"

    (root / "qa_train.txt").write_text(stories(48))
    (root / "qa_valid.txt").write_text(stories(16))
    return f'''task = "qa"
[data]
dataset = ""
train = "{root / 'qa_train.txt'}"
valid = "{root / 'qa_valid.txt'}"
batch_size = 8
eval_batch_size = 16
[model]
embedding_dim = 8
hidden_size = 8
hops = 1
memory_size = 4
dropout = 0.0
'''


def forecaster_files(root: Path) -> str:
    t = np.arange(89)  # 80 windows of 8 + 2 steps: 10 whole batches
    values = 10 + np.sin(t / 4) + 0.1 * np.cos(t / 1.7)
    rows = "".join(f"{2000 + i // 12}-{1 + i % 12:02d}-01,{v:.5f}\n" for i, v in zip(t, values))  # monthly
    (root / "series.csv").write_text("month,y\n" + rows)
    return f'''task = "forecaster"
[data]
path = "{root / 'series.csv'}"
date_column = "month"
target_columns = ["y"]
test = 0
val = 0
lookback = 8
horizon = 2
batch_size = 8
[model]
cell = "gru"
hidden_size = 8
'''


MAKERS = {"language_model": lm_files, "classifier": classifier_files, "qa": qa_files, "forecaster": forecaster_files}
TRAIN = '''[train]
epochs = 2
optimizer = "sgd"
lr = 0.2
clip_norm = 1.0
log_every = 1
device = "cpu"
'''


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("torchrun")
    paths = {}
    for task, make in MAKERS.items():
        paths[task] = root / f"{task}.toml"
        paths[task].write_text(make(root) + TRAIN)
    return paths


# ------------------------------------------------------------------------------------------ runs
class Run(NamedTuple):
    steps: list[dict]        # metrics.jsonl's step records
    weights: dict            # last/model.safetensors
    stdout: str
    stderr: str


def read_run(out: Path, stdout: str = "", stderr: str = "") -> Run:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return Run([r for r in records if r.get("type") == "step"], load_file(out / "last" / "model.safetensors"),
               stdout, stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables, one thread a process."""
    launcher = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items()
           if k not in launcher and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def torchrun(*args: object) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *map(str, args)]


def run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=clean_env())
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


_cache: dict[tuple, Run] = {}


def one_process(configs, task: str, tmp_path_factory) -> Run:
    """The reference: the task trained in this process, no group (the same global batches)."""
    if ("one", task) not in _cache:
        out = tmp_path_factory.mktemp(f"one_{task}")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            tasks.fit(tasks.load_experiment(configs[task]), out)
        finally:
            torch.set_num_threads(threads)
        _cache["one", task] = read_run(out)
    return _cache["one", task]


def torchrun_two(configs, task: str, tmp_path_factory) -> Run:
    """`torchrun --nproc_per_node 2 -m rnnkit.cli train CONFIG`, as a user types it (on a free port)."""
    if ("two", task) not in _cache:
        out = tmp_path_factory.mktemp(f"two_{task}")
        done = run(torchrun("--standalone", "--nproc_per_node", 2, "-m", "rnnkit.cli", "train", configs[task],
                            "--out", out))
        _cache["two", task] = read_run(out, done.stdout, done.stderr)
    return _cache["two", task]


def assert_same_training(run_: Run, reference: Run, exact: bool = False) -> None:
    assert [s["step"] for s in run_.steps] == [s["step"] for s in reference.steps]
    assert [s["items"] for s in run_.steps] == [s["items"] for s in reference.steps]  # the global batch, once
    losses, expected = [s["loss"] for s in run_.steps], [s["loss"] for s in reference.steps]
    assert run_.weights.keys() == reference.weights.keys()
    if exact:
        assert losses == expected
        for key, value in reference.weights.items():
            assert torch.equal(run_.weights[key], value), key
        return
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)
    for key, value in reference.weights.items():
        np.testing.assert_allclose(run_.weights[key].numpy(), value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


def results_printed(stdout: str) -> list[dict]:
    """The result JSON objects in a run's output (each starts with the checkpoint's path)."""
    found, decoder, at = [], json.JSONDecoder(), 0
    while (at := stdout.find('{\n  "checkpoint"', at)) >= 0:
        value, end = decoder.raw_decode(stdout, at)
        found.append(value)
        at = end
    return found


# ----------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("task", TASKS)
def test_torchrun_two_processes_match_one(configs, task, tmp_path_factory):
    reference = one_process(configs, task, tmp_path_factory)
    two = torchrun_two(configs, task, tmp_path_factory)
    assert len(reference.steps) >= 6
    assert_same_training(two, reference)
    assert len(results_printed(two.stdout)) == 1, two.stdout  # rank 0's only


def test_two_nodes_with_c10d_rendezvous_match_one(configs, tmp_path_factory, tmp_path):
    """Two torchrun agents (two 'machines'), one process each, meeting at a c10d rendezvous."""
    reference = one_process(configs, "language_model", tmp_path_factory)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(torchrun("--nnodes", 2, "--node-rank", node, "--nproc_per_node", 1,
                                       "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "job",
                                       "-m", "rnnkit.cli", "train", configs["language_model"], "--out", tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
             for node in (0, 1)]
    outputs = []
    for node in nodes:
        try:
            outputs.append(node.communicate(timeout=TIMEOUT))
        finally:
            node.kill()
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-4000:]
    assert_same_training(read_run(tmp_path), reference)
    assert len(results_printed(outputs[0][0] + outputs[1][0])) == 1


def test_srun_environment_matches_one(configs, tmp_path_factory, tmp_path):
    """Two processes started as `srun --ntasks 2` starts them: SLURM's variables, MASTER_* from the script."""
    reference = one_process(configs, "forecaster", tmp_path_factory)
    port = str(free_port())
    command = [sys.executable, "-m", "rnnkit.cli", "train", str(configs["forecaster"]), "--out", str(tmp_path)]
    tasks_ = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=clean_env(SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_NTASKS="2",
                                             SLURM_JOB_ID="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
              for i in (0, 1)]
    outputs = []
    for process in tasks_:
        try:
            outputs.append(process.communicate(timeout=TIMEOUT))
        finally:
            process.kill()
    for process, (stdout, stderr) in zip(tasks_, outputs):
        assert process.returncode == 0, stderr[-4000:]
    assert_same_training(read_run(tmp_path), reference)
    assert len(results_printed(outputs[0][0])) == 1 and results_printed(outputs[1][0]) == []


KILLER = '''"""rnnkit train under torchrun, where rank 1 of the first attempt dies at a given step, as a killed
worker would (no exception, no cleanup)."""
import os
import sys
from pathlib import Path

from rnnkit import train
from rnnkit.cli import main

KILL_AT, MARK = int(sys.argv.pop(1)), Path(sys.argv.pop(1))


class Die:
    def on_step_end(self, trainer, info):
        if (info["step"] == KILL_AT and os.environ["RANK"] == "1"
                and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"):
            MARK.write_text(str(info["step"]))
            os._exit(1)


init = train.Trainer.__init__


def with_die(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.callbacks.append(Die())


train.Trainer.__init__ = with_die
sys.argv[0] = "rnnkit"
main()
'''


def test_elastic_restart_resumes_bit_identical(configs, tmp_path_factory, tmp_path):
    """Rank 1 dies in the middle of epoch 2; torchrun restarts the group, which resumes from the last
    complete checkpoint (end of epoch 1) by itself and ends with the uninterrupted run's weights."""
    uninterrupted = torchrun_two(configs, "language_model", tmp_path_factory)
    per_epoch = len(uninterrupted.steps) // 2
    kill_at = per_epoch + per_epoch // 2
    script, mark, out = tmp_path / "killer.py", tmp_path / "killed", tmp_path / "run"
    script.write_text(KILLER)
    done = run(torchrun("--standalone", "--nproc_per_node", 2, "--max-restarts", 1, script, kill_at, mark,
                        "train", configs["language_model"], "--out", out))
    assert mark.read_text() == str(kill_at)  # the worker did die, mid-epoch 2
    assert "restart 1 by torchrun: resuming from" in done.stderr
    assert done.stderr.count("epoch 1 done") == 1 and done.stderr.count("epoch 2 done") == 1  # not started over
    restarted = read_run(out, done.stdout, done.stderr)
    assert_same_training(restarted, uninterrupted, exact=True)  # each step once, bit for bit
    assert len(results_printed(done.stdout)) == 1
