"""Malformed sweep files: each fails with file, line and field named, a non-zero exit, and nothing submitted."""

import sqlite3
import textwrap

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app

runner = CliRunner()

VALID = """\
name: bad
data: {source: pd-literary, vocab_size: 2048}
base:
  training: {batch_size: 8, seq_len: 64}
grid:
  size: [nano]
  budget: [1.0e11]
  residual: [{variant: residual}, {variant: mhc, n: 4}]
  seed: [0]
"""

# (description, sweep text, line, text the message must contain)
CASES = [
    ("yaml syntax error", "name: bad\ngrid: {size: [nano\n", 3, "not valid YAML"),
    ("tab indentation", "name: bad\ngrid:\n\tsize: [nano]\n", 3, "not valid YAML"),
    ("top level is a list", "- name: bad\n", 1, "top level must be a mapping"),
    ("empty file", "", 1, "top level must be a mapping"),
    ("unknown top-level key", VALID + "retries: 3\n", 10, "sweep.retries is not a known field"),
    ("missing name", VALID.replace("name: bad\n", "name2: bad\n"), 1, "sweep.name is required"),
    ("missing grid", VALID.split("grid:")[0], 1, "sweep.grid is required"),
    ("empty name", VALID.replace("name: bad", "name: ''"), 1, "sweep.name"),
    ("grid axis is not a list", VALID.replace("seed: [0]", "seed: 0"), 9, "sweep.grid.seed"),
    (
        "empty grid axis",
        VALID.replace("seed: [0]", "seed: []"),
        9,
        "sweep.grid.seed ([]) must list at least one",
    ),
    ("unknown preset", VALID.replace("size: [nano]", "size: [p5]"), 6, "model.preset (p5) must be one of"),
    ("unknown variant", VALID.replace("{variant: mhc, n: 4}", "{variant: dhc, n: 4}"), 8, "residual.variant"),
    ("n too large", VALID.replace("{variant: mhc, n: 4}", "{variant: mhc, n: 9}"), 8, "residual.n (9)"),
    ("n zero", VALID.replace("{variant: mhc, n: 4}", "{variant: mhc, n: 0}"), 8, "residual.n (0)"),
    (
        "mhc-lite n too large",
        VALID.replace("{variant: mhc, n: 4}", "{variant: mhc-lite, n: 7}"),
        8,
        "residual.n (7) must be <= 6 for mhc-lite",
    ),
    (
        "residual with n",
        VALID.replace("{variant: residual}", "{variant: residual, n: 2}"),
        8,
        "must be 1 for the plain residual",
    ),
    (
        "negative budget",
        VALID.replace("budget: [1.0e11]", "budget: [-1.0e+11]"),
        7,
        "budget.flops (-100000000000.0): Input should be greater than 0 [grid point size=nano",
    ),
    ("zero budget", VALID.replace("budget: [1.0e11]", "budget: [0]"), 7, "budget.flops (0)"),
    (
        "budget below one step",
        VALID.replace("budget: [1.0e11]", "budget: [1.0e5]"),
        7,
        "buys less than one optimizer step",
    ),
    ("budget is text", VALID.replace("budget: [1.0e11]", "budget: [lots]"), 7, "budget.flops ('lots')"),
    (
        "top_k above experts",
        VALID.replace("base:\n", "base:\n  model: {moe: {top_k: 12}}\n"),
        4,
        "model.moe.top_k (12) must be <= num_routed_experts (8)",
    ),
    (
        "odd rope dim",
        VALID.replace("base:\n", "base:\n  model: {attention: {qk_rope_head_dim: 7}}\n"),
        4,
        "qk_rope_head_dim (7) must be even",
    ),
    (
        "unknown model field",
        VALID.replace("base:\n", "base:\n  model: {depth: 3}\n"),
        4,
        "model.depth is not a known",
    ),
    ("negative lr", VALID.replace("seq_len: 64}", "seq_len: 64, lr: -0.1}"), 4, "training.lr (-0.1)"),
    (
        "batch not divisible",
        VALID.replace("seq_len: 64}", "seq_len: 64, grad_accum: 3}"),
        4,
        "training.grad_accum (3) must divide batch_size (8)",
    ),
    (
        "unknown schedule",
        VALID.replace("seq_len: 64}", "seq_len: 64, schedule: linear}"),
        4,
        "training.schedule",
    ),
    (
        "unknown training field",
        VALID.replace("seq_len: 64}", "seq_len: 64, epochs: 3}"),
        4,
        "training.epochs is not a known field",
    ),
    ("wrong type seq_len", VALID.replace("seq_len: 64}", "seq_len: long}"), 4, "training.seq_len ('long')"),
    ("duplicate grid points", VALID.replace("seed: [0]", "seed: [0, 0]"), 5, "duplicates the grid point"),
    ("zip of unknown axis", VALID + "zip: [[size, lr]]\n", 10, "sweep.zip.0 (lr) must name a grid axis"),
    (
        "zip of unequal axes",
        VALID.replace("seed: [0]", "seed: [0, 1]") + "zip: [[size, seed]]\n",
        10,
        "must zip axes of equal length",
    ),
    (
        "exclude unknown axis",
        VALID + "exclude: [{width: 3}]\n",
        10,
        "sweep.exclude.0 (width) is not a grid axis",
    ),
    (
        "include unknown axis",
        VALID + "include: [{depth: 3}]\n",
        10,
        "sweep.include.0 (depth) is not a grid axis",
    ),
    ("retry diverged", VALID + "retry: {retry_reasons: [diverged]}\n", 10, "must not be retried"),
    ("negative retries", VALID + "retry: {max_retries: -1}\n", 10, "sweep.retry.max_retries (-1)"),
    (
        "fractional gpus",
        VALID + "resources: {default: {gpus: 0.5}}\n",
        10,
        "sweep.resources.default.gpus (0.5)",
    ),
    ("zero cpus", VALID + "resources: {default: {cpus: 0}}\n", 10, "sweep.resources.default.cpus (0)"),
    ("vocab too small", VALID.replace("vocab_size: 2048", "vocab_size: 10"), 2, "data.vocab_size (10)"),
    ("unknown corpus", VALID.replace("source: pd-literary", "source: wikitext"), 2, "data.source"),
    (
        "missing text files",
        VALID.replace("source: pd-literary", "source: [/nonexistent/*.txt]"),
        2,
        "matches no file",
    ),
    ("python object tag", "name: !!python/object/apply:os.system [echo]\n", 1, "not valid YAML"),
    ("max_concurrent zero", VALID + "max_concurrent: 0\n", 10, "sweep.max_concurrent (0)"),
]


@pytest.mark.parametrize(("text", "line", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_sweep_fails_naming_line_and_field_and_submits_nothing(
    tmp_path, monkeypatch, text, line, expected
):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["submit", str(path)], terminal_width=400)
    assert result.exit_code != 0
    output = " ".join(result.output.split())
    assert f"{path}:{line}:" in output, output
    assert " ".join(expected.split()) in output, output
    if store.exists():  # a store may exist only if something opened it: it must hold no run
        with sqlite3.connect(store) as db:
            assert db.execute("select count(*) from runs").fetchone()[0] == 0
    assert not (tmp_path / "runs").exists()


def test_there_are_at_least_thirty_malformed_cases():
    assert len(CASES) >= 30


def test_the_valid_base_expands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "good.yaml"
    path.write_text(textwrap.dedent(VALID))
    result = runner.invoke(app, ["submit", str(path), "--dry-run"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "2 grid points" in result.output
