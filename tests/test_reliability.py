"""Every bad-input case of ``dreamgym bench reliability`` (``app/reliability_cases.py``): refused in
one line (or, for a check command, reported) naming what was wrong, nothing lost, nothing written.
The same code counts them for the README's figures (``benchmarks/results/reliability.json``)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from dreamgym.app.reliability import counts, make_inputs, run_case
from dreamgym.app.reliability_cases import all_cases

torch.set_num_threads(1)  # the machine is shared

CASES = {c.name: c for c in all_cases()}


def _folder(workdir, name: str):
    return workdir / "cases" / re.sub(r"[^A-Za-z0-9]+", "_", name)  # a path Hydra reads as one value


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def inputs(workdir):
    return make_inputs(workdir / "inputs")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_by_name_and_nothing_is_lost(inputs, workdir, name):
    r = run_case(CASES[name], inputs, _folder(workdir, name))
    if r.get("skipped"):
        pytest.skip(r["skipped"])
    assert r["bug"] is None, r["bug"]
    assert r["refused_in_one_line"], f"exit status {r['exit_status']}, line {r['line']!r}"
    assert r["named"], f"{r['line']!r} does not name {CASES[name].names(_folder(workdir, name), inputs)}"
    assert not r["lost"], f"changed or removed: {r['lost']}"
    assert not r["wrote"], f"wrote: {r['wrote']}"
    assert r["passed"]


def test_a_case_that_writes_or_loses_a_file_fails(inputs, workdir):
    """The checks bite: a command that runs (and writes its output) is not a refusal."""
    from dataclasses import replace

    ok = replace(CASES["train-wm steps=-5"], argv=lambda d, i: ["dataset", "info", str(i.data)])
    r = run_case(ok, inputs, workdir / "cases" / "runs")
    assert r["exit_status"] == 0 and not r["refused_in_one_line"] and not r["passed"]
    writes = replace(CASES["train-wm steps=-5"], setup=None, argv=lambda d, i: ["collect", f"out={d / 'data'}", *i.collect_args])
    r = run_case(writes, inputs, workdir / "cases" / "writes")
    assert r["wrote"] and not r["passed"]


def test_the_bench_writes_the_counts(inputs, workdir, tmp_path):
    from dreamgym.app.cli import main

    out = tmp_path / "reliability.json"
    names = ["train-wm steps=-5", "eval-policy on a crafted SB3 zip", "dataset verify on a damaged shard"]
    assert main(["bench", "reliability", f"workdir={workdir}", f"out={out}", f"cases=[{','.join(map(repr, names))}]"]) == 0
    r = json.loads(out.read_text())
    assert r["benchmark"] == "reliability" and list(r["arms"]) == names
    s = r["summary"]
    assert s == counts(list(r["arms"].values()))
    assert (s["cases"], s["tried"], s["refused_in_one_line"], s["reported_by_name"], s["passed"], s["failed"]) == (3, 3, 2, 1, 3, [])
    assert s["lost_nothing"] == s["wrote_nothing"] == 3
