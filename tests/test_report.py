"""biogpt report: its numbers are `biogpt score`'s, its intervals a bootstrap over the
examples (documents; HoC's sentences), each kind of INPUT is read, each example's errors
are sorted by kind, and a bad input is one line. The inputs come from conftest.py's
`few_predictions`, `reproduce_run` and `evaluate_report`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from shared_data import DATA, needs_data

from biogpt import tasks
from biogpt.checkpoint import checkpoint_hash
from biogpt.cli import main
from biogpt.report.analysis import COUNTS, resampled_score
from biogpt.report.bootstrap import CONFIDENCE, bootstrap_intervals, resample_indices
from biogpt.report.breakdown import example_issues, per_type
from biogpt.report.build import write_report
from biogpt.tasks import Example, Parsed


def printed_score(task: str, predictions: Path, capsys) -> dict[str, float]:
    capsys.readouterr()
    argv = ["score", "--task", task, "--split", "test", "--predictions", str(predictions)]
    assert main([*argv, "--data", str(DATA)]) == 0
    return json.loads(capsys.readouterr().out)


def read_report(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# The numbers
# --------------------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("task", ["bc5cdr", "ddi", "pubmedqa", "hoc"])
def test_the_report_numbers_are_those_biogpt_score_prints(
    task, tmp_path, capsys, few_predictions
) -> None:
    predictions = tmp_path / "preds.jsonl"
    few_predictions(task, predictions)
    given = len(predictions.read_text().splitlines())
    path = write_report(
        [f"{task}:test:{predictions}"], tmp_path / "out", data_dir=DATA, bootstrap=20,
        plots=False,
    )  # fmt: skip
    results = read_report(path)["results"]
    printed = printed_score(task, predictions, capsys)
    metrics = {k: v for k, v in printed.items() if k not in COUNTS}
    assert [r["metric"] for r in results] == list(tasks.get(task).score([], {}))
    assert {r["metric"]: r["value"] for r in results} == metrics
    assert 0 < metrics[tasks.get(task).main_metric] < 1  # the wrong answers cost something
    for r in results:
        assert r["counts"]["missing"] == printed["missing"] == printed["examples"] - given
        assert r["counts"]["unparseable"] == printed["unparseable"] >= 1
        assert r["n"] == printed["examples"]
        assert r["unit"] == ("sentences" if task == "hoc" else "documents")  # HoC's rows
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    main_result = next(r for r in results if r["main"])
    assert main_result["ci_low"] < main_result["ci_high"]  # right and wrong answers vary
    markdown = (tmp_path / "out" / "report.md").read_text()
    unit = results[0]["unit"]
    assert f"bootstrap over {unit}" in markdown and f"| {results[0]['n']} {unit} |" in markdown


def test_the_paper_numbers_are_on_the_scale_score_prints() -> None:
    from biogpt.report.paper import paper_number

    assert paper_number("bc5cdr", "test", "f1").value == pytest.approx(0.4498)
    assert paper_number("hoc", "test", "micro_f1").value == pytest.approx(0.8512)
    assert paper_number("pubmedqa-rf", "test", "accuracy").value == pytest.approx(0.782)
    assert paper_number("pubmedqa", "test", "accuracy") is None  # reasoning-required
    assert paper_number("bc5cdr", "valid", "f1") is None  # the paper's are test numbers
    assert paper_number("ddi", "test", "micro_f1") is None


# --------------------------------------------------------------------------------------------
# The bootstrap
# --------------------------------------------------------------------------------------------


def test_a_constant_metric_has_a_zero_width_interval() -> None:
    interval = bootstrap_intervals(7, lambda indices: {"m": 0.25}, resamples=200)["m"]
    assert interval.low == interval.high == 0.25


def test_resampling_is_by_example() -> None:
    """PubMedQA's accuracy of one right and one wrong answer, on resamples of the two."""
    task = tasks.get("pubmedqa")
    examples = [Example(id=k, source="q", target="", gold="yes") for k in ("a", "b")]
    statistic = resampled_score(task, examples, {"a": Parsed("yes"), "b": Parsed("no")})
    seen: list[float] = []

    def recorded(indices):
        scores = statistic(indices)
        seen.append(scores["accuracy"])
        return scores

    interval = bootstrap_intervals(2, recorded, resamples=500, seed=3)["accuracy"]
    assert set(seen) == {0.0, 0.5, 1.0}  # both, or one of the two twice
    assert (interval.low, interval.high) == (0.0, 1.0)


def test_the_interval_is_the_percentiles_of_the_resampled_metric() -> None:
    """The interval of DDI's micro F1 is numpy's 2.5th and 97.5th percentiles of the metric
    on the very resamples `resample_indices` draws from the seed."""
    task = tasks.get("ddi")
    examples = [
        drug_example(str(i), [(f"a{i}", f"b{i}", "effect"), (f"c{i}", f"d{i}", "advise")])
        for i in range(8)
    ]
    parsed = {
        ex.id: Parsed(ex.gold[: i % 3]) for i, ex in enumerate(examples)
    }  # 0, 1 or 2 of each document's relations found
    statistic = resampled_score(task, examples, parsed)
    values = [
        statistic(indices.tolist())["micro_f1"]
        for indices in resample_indices(len(examples), 300, seed=5)
    ]
    assert CONFIDENCE == 0.95
    low, high = np.percentile(values, [2.5, 97.5])
    interval = bootstrap_intervals(len(examples), statistic, resamples=300, seed=5)["micro_f1"]
    assert (interval.low, interval.high) == (low, high)
    assert interval.low < interval.high


def drug_example(key: str, triples: list[tuple[str, str, str]]) -> Example:
    return Example(id=key, source=" ".join(t[0] for t in triples), target="", gold=triples)


def test_a_document_with_many_relations_moves_them_all_together() -> None:
    """Micro recall 20/22 where one document holds 20 found relations and two documents one
    missed relation each: resampling documents, a resample without the big one scores 0 and
    one of it alone scores 1, so the interval spans [0, 1] (resampling the 22 relations
    would give a narrow one around 0.9)."""
    task = tasks.get("ddi")
    big = drug_example("big", [(f"drug{i}", f"other{i}", "effect") for i in range(20)])
    small = [drug_example(k, [(f"x{k}", f"y{k}", "advise")]) for k in ("b", "c")]
    examples = [big, *small]
    parsed = {"big": Parsed(big.gold), "b": Parsed([]), "c": Parsed([])}
    statistic = resampled_score(task, examples, parsed)
    assert statistic([0, 1, 2])["micro_recall"] == pytest.approx(20 / 22)
    # a document drawn twice counts twice (its copies get distinct ids)
    assert statistic([0, 0, 1])["micro_recall"] == pytest.approx(40 / 41)
    seen: list[float] = []

    def recorded(indices):
        scores = statistic(indices)
        seen.append(scores["micro_recall"])
        return scores

    first = bootstrap_intervals(3, recorded, resamples=400, seed=1)
    # the big document drawn 0, 1, 2 or 3 times among the 3
    assert {round(v, 9) for v in seen} == {0.0, round(20 / 22, 9), round(40 / 41, 9), 1.0}
    assert first["micro_recall"].low == 0.0 and first["micro_recall"].high > 40 / 41
    assert bootstrap_intervals(3, statistic, resamples=400, seed=1) == first  # same seed
    assert bootstrap_intervals(3, statistic, resamples=400, seed=2) != first


# --------------------------------------------------------------------------------------------
# Errors by kind
# --------------------------------------------------------------------------------------------


def test_errors_are_missed_spurious_and_wrong_type() -> None:
    task = tasks.get("ddi")
    gold = [("aspirin", "warfarin", "effect"), ("a b", "c", "mechanism"), ("e", "f", "advise")]
    example = drug_example("1", gold)
    answer = (
        "the interaction between aspirin and warfarin is effect; "
        "the interaction between a b and c is advise; the interaction between x and y is int; "
        "not a statement."
    )
    parsed = task.parse(answer, example)
    kinds = [(i.kind, i.gold, i.predicted) for i in example_issues(task, example, answer, parsed)]
    assert kinds == [
        ("unparseable", None, answer),
        ("wrong type", {"head": "a b", "tail": "c", "relation": "mechanism"},
         {"head": "a b", "tail": "c", "relation": "advise"}),
        ("missed", {"head": "e", "tail": "f", "relation": "advise"}, None),
        ("spurious", None, {"head": "x", "tail": "y", "relation": "int"}),
    ]  # fmt: skip
    table = per_type(task, [example], {"1": parsed})
    assert table["effect"]["f1"] == 1.0
    assert (table["mechanism"]["gold"], table["mechanism"]["recall"]) == (1, 0.0)
    assert (table["advise"]["predicted"], table["advise"]["precision"]) == (1, 0.0)
    assert table["(other)"]["predicted"] == 1  # "int": a type the gold never uses
    missing = example_issues(task, example, None, task.empty())
    assert [i.kind for i in missing] == ["missing", "missed", "missed", "missed"]


def test_a_pubmedqa_wrong_label_is_a_wrong_type() -> None:
    task = tasks.get("pubmedqa")
    example = Example(id="1", source="q", target="", gold="yes")
    answer = "the answer to the question given the context is no."
    issues = example_issues(task, example, answer, task.parse(answer, example))
    assert [(i.kind, i.gold, i.predicted) for i in issues] == [("wrong type", "yes", "no")]


# --------------------------------------------------------------------------------------------
# Each kind of input
# --------------------------------------------------------------------------------------------


@needs_data
def test_each_kind_of_input_is_read(
    tmp_path, monkeypatch, few_predictions, reproduce_run, evaluate_report
) -> None:
    run = reproduce_run(tmp_path)
    evaluated = evaluate_report(tmp_path)
    few_predictions("hoc", tmp_path / "hoc.jsonl")
    monkeypatch.chdir(tmp_path / "run")  # not where the evaluate report's predictions are
    notes: list[str] = []
    path = write_report(
        [str(run), str(evaluated), f"hoc:test:{tmp_path / 'hoc.jsonl'}"], tmp_path / "out",
        data_dir=DATA, bootstrap=30, seed=2, note=notes.append,
    )  # fmt: skip
    unfinished, disagreeing = notes  # one line each
    assert unfinished.startswith(str(run / "hoc")) and "no result.json" in unfinished
    assert "pubmedqa accuracy was recorded as 0.5, scored here" in disagreeing
    report = read_report(path)
    ddi, qa, hoc = report["sources"]
    assert (ddi["kind"], ddi["model"], ddi["checkpoint_hash"]) == (
        "reproduce",
        str(run / "ddi" / "train" / "averaged"),
        "tuned-hash",
    )
    assert (ddi["base_model"], ddi["tokens_per_s"], ddi["package"]["version"]) == (
        "mini",
        40.0,
        "9.9",
    )
    assert (qa["kind"], qa["model"], qa["predict_seconds"], qa["limit"]) == (
        "evaluate",
        "runs/qa/averaged",
        7.5,
        6,
    )
    # its model is found beside the report, not from the folder the report runs in
    evaluated_model = evaluated.parent / "runs" / "qa" / "averaged"
    assert qa["checkpoint_hash"] == checkpoint_hash(evaluated_model)
    assert qa["log"] == str((evaluated_model.parent / "log.jsonl").resolve())
    assert (hoc["kind"], hoc["model"], hoc["tokens_per_s"]) == ("predictions", None, None)
    n = {(r["task"], r["source"]): r["n"] for r in report["results"]}
    assert n[("ddi", 0)] == 5 and n[("pubmedqa", 1)] == 6 and n[("hoc", 2)] > 1000
    assert report["package"].keys() >= {"version", "commit"} and "cpu" in report["hardware"]
    units = {r["task"]: r["unit"] for r in report["results"]}
    assert units == {"ddi": "documents", "pubmedqa": "documents", "hoc": "sentences"}
    plots = {Path(p["path"]).name for p in report["plots"]}
    assert {"paper.png", "errors.png", "ddi-test-loss.png", "ddi-test-types.png",
            "pubmedqa-test-confusion.png", "pubmedqa-test-loss.png",
            "hoc-test-labels.png"} <= plots  # fmt: skip
    assert all((tmp_path / "out" / p["path"]).stat().st_size > 1000 for p in report["plots"])
    assert sum(report["details"][1]["confusion"]["yes"].values()) > 0

    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").open()]
    assert len(samples) == 5 + 6 + n[("hoc", 2)]
    fields = {"task", "split", "id", "input", "gold", "prediction", "parsed", "score", "errors"}
    assert all(fields <= s.keys() for s in samples)
    first_ddi = samples[0]
    assert first_ddi["errors"] == [] and first_ddi["score"]["f1"] == 1.0
    assert samples[4]["errors"] == ["missed", "spurious"]  # another document's answer
    assert samples[5]["errors"] == []  # pubmedqa's first: the gold answer
    assert samples[5 + 5]["errors"] == ["unparseable"]  # pubmedqa's sixth: no label
    assert samples[-1]["errors"] == ["missed", "missing"]  # a HoC sentence left unanswered

    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| ddi | test | f1 |" in markdown and "tuned-hash" in markdown
    assert "reasoning-free" in markdown and "runs/qa/averaged" in markdown
    assert "not the paper's recipe: max_epochs 1 (paper 100)" in markdown
    assert "decoding: strategy greedy, max_new_tokens 8" in markdown
    assert f"{n[('hoc', 2)]} sentences scored, bootstrap over sentences" in markdown
    assert "5 documents scored, bootstrap over documents" in markdown
    assert "ours [95% CI]" in markdown


@needs_data
def test_a_model_is_found_from_the_predictions_meta_record(tmp_path, few_predictions) -> None:
    """A predictions file's meta record names the model absolutely: its hash, decoding and
    training log (the run two folders above `RUN/checkpoints/epoch2`) are reported."""
    model = tmp_path / "run" / "checkpoints" / "epoch2"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"epoch 2 weights")
    (tmp_path / "run" / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    predictions = tmp_path / "p.jsonl"
    few_predictions("pubmedqa", predictions)
    run = {"--model": str(model), "--dtype": "fp32", "--max-new-tokens": 16}
    (tmp_path / "p.jsonl.meta.json").write_text(json.dumps({"run": run}))
    path = write_report([f"pubmedqa:test:{predictions}"], tmp_path / "out", data_dir=DATA,
                        bootstrap=0, plots=False)  # fmt: skip
    (source,) = read_report(path)["sources"]
    assert (source["model"], source["checkpoint_hash"]) == (str(model), checkpoint_hash(model))
    assert source["decoding"] == {"strategy": "greedy", "dtype": "fp32", "max_new_tokens": 16}
    assert source["log"] == str(tmp_path / "run" / "log.jsonl")


@needs_data
def test_a_model_found_nowhere_has_no_hash(tmp_path, few_predictions) -> None:
    folder = tmp_path / "evaluated"
    folder.mkdir()
    few_predictions("pubmedqa", folder / "preds.jsonl")
    report = {"task": "pubmedqa", "split": "test", "model": "gone/averaged",
              "predictions": "preds.jsonl"}  # fmt: skip
    (folder / "report.json").write_text(json.dumps(report))
    path = write_report([str(folder / "report.json")], tmp_path / "out", data_dir=DATA,
                        bootstrap=0, plots=False)  # fmt: skip
    (source,) = read_report(path)["sources"]
    assert (source["model"], source["checkpoint_hash"], source["log"]) == (
        "gone/averaged",
        None,
        None,
    )


@needs_data
def test_overwrite_deletes_only_the_report_s_own_figures(tmp_path, few_predictions) -> None:
    few_predictions("pubmedqa", tmp_path / "p.jsonl")
    plots = tmp_path / "out" / "plots"
    plots.mkdir(parents=True)
    for name in ("mine.png", "paper.png", "pubmedqa-test-confusion.png"):
        (plots / name).write_bytes(b"an earlier picture")
    write_report([f"pubmedqa:test:{tmp_path / 'p.jsonl'}"], tmp_path / "out", data_dir=DATA,
                 bootstrap=0, overwrite=True, plots=False)  # fmt: skip
    assert sorted(p.name for p in plots.iterdir()) == ["mine.png"]


@needs_data
def test_without_matplotlib_everything_else_is_written(
    tmp_path, monkeypatch, few_predictions
) -> None:
    few_predictions("pubmedqa", tmp_path / "p.jsonl")
    for module in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` now raises ImportError
    notes: list[str] = []
    path = write_report([f"pubmedqa:test:{tmp_path / 'p.jsonl'}"], tmp_path / "out",
                        data_dir=DATA, bootstrap=5, note=notes.append)  # fmt: skip
    assert read_report(path)["plots"] == []
    assert len(notes) == 1 and "pip install 'biogpt[plot]'" in notes[0]
    assert (tmp_path / "out" / "report.html").is_file()
    assert not (tmp_path / "out" / "plots").exists()


# --------------------------------------------------------------------------------------------
# Bad inputs: one line each
# --------------------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("missing.json", "no such file or directory"),
        ("nope:test:{preds}", "unknown task 'nope'"),
        ("bc5cdr:nosplit:{preds}", "has no split 'nosplit'"),
        ("bc5cdr:test:missing.jsonl", "no such predictions file"),
        ("bc5cdr::{preds}", "expected TASK:SPLIT:PREDICTIONS.jsonl"),
        ("ddi:test:{preds}", "none of its"),  # BC5CDR's ids are no DDI document's
        ("{bad_report}", "not an evaluate report"),
        ("{folder}", "not a reproduce run"),
    ],
)
def test_a_bad_input_is_one_line(
    spec, says, tmp_path, monkeypatch, error_line, few_predictions
) -> None:
    monkeypatch.chdir(tmp_path)
    few_predictions("bc5cdr", tmp_path / "preds.jsonl")
    (tmp_path / "bad.json").write_text('{"task": "bc5cdr"}')
    (tmp_path / "folder").mkdir()
    given = spec.format(preds="preds.jsonl", bad_report="bad.json", folder="folder")
    code = main(["report", given, "--out", "out", "--data", str(DATA)])
    line = error_line()
    assert code == 2 and line.startswith("biogpt report: error: ") and says in line, line


def test_a_full_out_folder_is_refused_before_any_work(tmp_path, error_line) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code = main(["report", "missing:test:nowhere.jsonl", "--out", str(tmp_path / "out")])
    line = error_line()
    assert code == 2 and "--overwrite" in line and "not empty" in line
