"""Tasks: formats, parsers, metrics, round trips on the shared data, encoding, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import DATA, needs_data

import biogpt.tasks as tasks
from biogpt.errors import BioGPTError
from biogpt.tasks import Example, Parsed
from biogpt.tasks.relation import BC5CDR, KDDTI, Template, read_pubtator, title_and_abstract
from biogpt.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_pretrained("biogpt")


# --------------------------------------------------------------------------------------------
# Round trips: format the gold target, parse it back, score it
# --------------------------------------------------------------------------------------------

# Scores of the gold targets parsed back, where they are not exactly 1.0.
# BC5CDR: a target names each MeSH id by its longest mention in the document; scoring maps
# the name back through the split-level table, where that name can belong to another id
# (the split table keeps one id per name) -> 7/1038, 7/1009 and 13/1066 pairs come back
# wrong, on both precision and recall.
# KD-DTI: one document per split has a name containing " and " where both readings put
# a name found in the source ("signal transducer and activator of transcription 3 ..."),
# so the parser, like the release's greedy regex, splits at the wrong " and ": one of two
# triples lost in valid doc 25974391, the only triple in test doc 25609248.
COUNT_KEYS = {"examples", "unknown_ids", "missing", "unparseable", "unparseable_pieces"}


def bc5cdr_ceiling(right: int, total: int) -> dict[str, float]:
    return dict.fromkeys(("precision", "recall", "f1"), right / total)


def kd_dti_ceiling(examples: list[Example], documents_f1: float) -> dict[str, float]:
    """One triple of the split lost: mean document scores sum to `documents_f1`, the
    micro scores miss one triple out of all."""
    triples = sum(len(set(e.gold)) for e in examples)
    mean = documents_f1 / len(examples)
    micro = (triples - 1) / triples
    out = {f"micro_{k}": micro for k in ("precision", "recall", "f1")}
    for suffix in ("", "_normalised"):
        out.update({f"{k}{suffix}": mean for k in ("precision", "recall", "f1")})
    return out


CEILINGS = {
    ("bc5cdr", "train"): lambda examples: bc5cdr_ceiling(1031, 1038),
    ("bc5cdr", "valid"): lambda examples: bc5cdr_ceiling(1002, 1009),
    ("bc5cdr", "test"): lambda examples: bc5cdr_ceiling(1053, 1066),
    # valid: 999 documents right, one at P = R = F1 = 1/2; test: 1158 right, one at 0
    ("kd-dti", "valid"): lambda examples: kd_dti_ceiling(examples, 999.5),
    ("kd-dti", "test"): lambda examples: kd_dti_ceiling(examples, 1158.0),
}
ALL_SPLITS = [
    (name, split)
    for name in tasks.names()
    if name != "custom"
    for split in tasks.get(name).splits
    if (name, split) != ("kd-dti", "train")  # not distributed
]


@needs_data
@pytest.mark.parametrize(("name", "split"), ALL_SPLITS)
def test_round_trip(name: str, split: str) -> None:
    task = tasks.get(name)
    examples = task.load(split, DATA)
    assert examples
    scores = tasks.score_predictions(task, examples, {e.id: e.target for e in examples})
    assert scores["unparseable"] == scores["missing"] == scores["unknown_ids"] == 0
    ceiling = CEILINGS.get((name, split))
    expected = ceiling(examples) if ceiling else {}
    if name == "kd-dti":
        assert len(examples) == {"valid": 1000, "test": 1159}[split]
    for key in (k for k in scores if k not in COUNT_KEYS):
        assert scores[key] == pytest.approx(expected.get(key, 1.0)), key


# --------------------------------------------------------------------------------------------
# PubTator reader vs the shared JSON
# --------------------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize(
    ("pubtator", "split"),
    [("CDR_TrainingSet", "train"), ("CDR_DevelopmentSet", "valid"), ("CDR_TestSet", "test")],
)
def test_pubtator_agrees_with_json(pubtator: str, split: str) -> None:
    ours = read_pubtator(DATA / "bc5cdr" / "pubtator" / f"{pubtator}.PubTator.txt")
    theirs = json.loads((DATA / "bc5cdr" / f"{split}.json").read_text())
    assert ours.keys() == theirs.keys()
    # Known, explained differences of the JSON preparation:
    # - it drops some CID relations of two validation documents;
    # - for a composite mention without its parts column ("hyper- or dyskinetic" ->
    #   two ids) it guesses part names, where we leave the mention out.
    relations_differ = {"valid": {"9022662", "1595783"}}.get(split, set())
    names_differ = {"train": {"3800626"}, "valid": {"15096016"}, "test": {"9578276"}}[split]
    for pmid, doc in theirs.items():
        mine = ours[pmid]
        assert (mine["title"], mine["abstract"]) == (doc["title"], doc["abstract"])
        if pmid in relations_differ:
            assert all(r in mine["relations"] for r in doc["relations"])
        else:
            assert mine["relations"] == doc["relations"]
        assert mine["chemical2id"] == doc["chemical2id"]
        if pmid in names_differ:
            assert mine["disease2id"].items() <= doc["disease2id"].items()
        else:
            assert mine["disease2id"] == doc["disease2id"]


def test_pubtator_composite_mentions(tmp_path: Path) -> None:
    path = tmp_path / "x.PubTator.txt"
    path.write_text(
        "1|t|Ocular and auditory toxicity.\n1|a|Drug X.\n"
        "1\t0\t28\tOcular and auditory toxicity\tDisease\tD1|D2\tOcular toxicity|auditory toxicity\n"
        "1\t30\t36\tDrug X\tChemical\tC1\n1\t0\t1\tnone\tChemical\t\n1\tCID\tC1\tD1\n\n"
    )
    doc = read_pubtator(path)["1"]
    assert doc["disease2id"] == {"ocular toxicity": "D1", "auditory toxicity": "D2"}
    assert doc["chemical2id"] == {"drug x": "C1", "none": "-1"}
    assert doc["relations"] == [{"chemical": "C1", "disease": "D1"}]
    path.write_text("1|t|x\nnot a line\n")
    with pytest.raises(BioGPTError, match=r"x.PubTator.txt:2"):
        read_pubtator(path)


# --------------------------------------------------------------------------------------------
# Formatting on hand examples
# --------------------------------------------------------------------------------------------


def test_title_abstract_join() -> None:
    assert title_and_abstract("A title.", "Body.") == "A title. Body."
    assert title_and_abstract("A title", "Body.") == "A title. Body."
    assert title_and_abstract("Is it?", "Body.") == "Is it? Body."


def test_bc5cdr_format_names_ids_by_longest_mention() -> None:
    doc = {
        "title": "Naloxone and Clonidine",
        "abstract": "Hypotension occurred.",
        "relations": [{"chemical": "C1", "disease": "D1"}],
        "chemical2id": {"naloxone": "C1", "nalox": "C1", "clonidine": "C2"},
        "disease2id": {"low bp": "D1", "hypotension": "D1"},
    }
    assert BC5CDR.format_source(doc) == "naloxone and clonidine. hypotension occurred."
    target = BC5CDR().format_target(doc)
    assert target == "the relation between naloxone and hypotension exists."


def test_kd_dti_orders_triples_by_drug_position_and_lowercases() -> None:
    doc = {
        "title": "Title",
        "abstract": "Bdrug acts on T1. Adrug acts later on T2.",
        "triples": [
            {"drug": "Adrug", "target": "T2", "interaction": "Inhibitor"},
            {"drug": "Bdrug", "target": "T1", "interaction": "agonist"},
        ],
    }
    task = KDDTI()
    source = task.format_source(doc)
    assert source == "title. bdrug acts on t1. adrug acts later on t2."
    assert task.format_target(doc["triples"], source) == (
        "the interaction between bdrug and t1 is agonist; "
        "the interaction between adrug and t2 is inhibitor."
    )


@needs_data
def test_loaders_drop_and_index_as_the_release() -> None:
    ddi = tasks.get("ddi").load("train", DATA)
    assert len(ddi) == 664 - 195  # documents without triples are dropped
    hoc = tasks.get("hoc").load("test", DATA)
    assert [e.id for e in hoc[:3]] == ["0", "1", "2"] and len(hoc) == 4947
    assert all(e.source.endswith(".") for e in hoc)
    qa = tasks.get("pubmedqa").load("test", DATA)[0]
    assert qa.id == "12377809" and qa.source.startswith("question: Is anorectal endosonography")
    assert " context: " in qa.source and qa.source.endswith(" ")
    assert qa.target == "the answer to the question given the context is yes."
    rf = tasks.get("pubmedqa-rf").load("test", DATA)[0]
    assert rf.id == qa.id and " answer: " in rf.source
    ner = tasks.get("ner").load("train", DATA)[0]
    assert ner.source.startswith("Selegiline - induced postural hypotension")
    assert ner.target.startswith("the entities are Selegiline (chemical); ")


def test_hoc_format() -> None:
    task = tasks.get("hoc")
    assert task.format_source("No period here ") == "No period here."
    assert task.format_target("a|b") == "the type of this document is a|b."


# --------------------------------------------------------------------------------------------
# Parsers on malformed text
# --------------------------------------------------------------------------------------------


def example(task_name: str, **fields) -> Example:
    return Example(id="1", source=fields.pop("source", ""), target="", gold=None, **fields)


def test_relation_parser_strips_prompt_and_counts_bad_pieces() -> None:
    task = tasks.get("kd-dti")
    ex = example("kd-dti", source="aspirin and cox and x")
    text = "learned1 learned2 the interaction between aspirin and cox is inhibitor; garbage; ."
    parsed = task.parse(text, ex)
    assert parsed == Parsed([("aspirin", "cox", "inhibitor")], 1)
    assert task.parse("", ex) == Parsed([], 1)  # no answer is not "no relations"
    assert task.parse("the interaction between and is", ex).unparseable == 1


# An answer the model did not give: nothing, white space, or its prompt tokens echoed.
NOT_ANSWERS = ["", "  \n ", "learned9learned9 learned9", "learned1.", " . "]
# Per task, the answer that says "nothing here": it parses to an empty structure.
NOTHING_FOUND = {
    "ner": ("there are no entities.", []),
    "hoc": ("the type of this document is empty.", {"empty"}),
    "custom": ("there are no relations.", []),
}


@pytest.mark.parametrize("name", ["bc5cdr", "kd-dti", "ddi", "pubmedqa", "pubmedqa-rf", "hoc",
                                  "ner", "custom", "custom-plain"])  # fmt: skip
def test_an_answer_of_no_text_is_unparseable(name: str, tmp_path: Path) -> None:
    task = tasks.get(name.removesuffix("-plain"))
    if name.startswith("custom"):  # the kind of a custom task comes from its data
        row = {"id": 1, "text": "t", "relations": []} if name == "custom" else {}
        row = row or {"id": 1, "text": "t", "target": "an answer"}
        (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
        task.load("train", tmp_path)
    gold = {"bc5cdr": set(), "pubmedqa": "yes", "pubmedqa-rf": "no", "hoc": {"empty"}}
    ex = Example("1", "t", "", gold.get(name, []), {"chemical2id": {}, "disease2id": {}})
    if name == "custom-plain":
        ex = Example("1", "t", "", "an answer")
    for text in NOT_ANSWERS:
        assert task.parse(text, ex).unparseable == 1, (name, text)
        scores = tasks.score_predictions(task, [ex], {ex.id: text})
        assert scores["unparseable"] == 1 and scores["missing"] == 0, (name, text)
    if name in NOTHING_FOUND:
        text, value = NOTHING_FOUND[name]
        assert task.parse(text, ex) == Parsed(value, 0)


def test_template_readings_follow_greedy_order_and_evidence() -> None:
    template = Template("the relation between {head} and {tail} exists", ("head", "tail"))
    readings = template.readings("the relation between a and b and c exists")
    assert readings == [{"head": "a and b", "tail": "c"}, {"head": "a", "tail": "b and c"}]
    task = tasks.get("bc5cdr")
    ex = example("bc5cdr", context={"chemical2id": {"a": "C"}, "disease2id": {"b and c": "D"}})
    assert task.parse("the relation between a and b and c exists.", ex).value == [("a", "b and c")]
    with pytest.raises(BioGPTError):
        Template("{head}{tail}", ("head", "tail"))


def test_qa_hoc_ner_parsers() -> None:
    qa = tasks.get("pubmedqa")
    assert (
        qa.parse("the answer to the question given the context is maybe.", example("")).value
        == "maybe"
    )
    assert qa.parse("yes", example("")).value == "yes"
    assert qa.parse("perhaps", example("")) == Parsed(None, 1)
    hoc = tasks.get("hoc")
    parsed = hoc.parse(
        "the type of this document is empty|nonsense|cellular energetics.", example("")
    )
    assert parsed == Parsed({"empty", "cellular energetics"}, 1)
    ner = tasks.get("ner")
    parsed = ner.parse("the entities are Aspirin (Chemical); oops; fever (disease).", example(""))
    assert parsed == Parsed([("aspirin", "chemical"), ("fever", "disease")], 1)
    assert ner.parse("there are no entities.", example("")) == Parsed([])


# --------------------------------------------------------------------------------------------
# Scoring: unknown, missing and unparseable predictions
# --------------------------------------------------------------------------------------------


def test_score_predictions_counts_bad_ids_and_text() -> None:
    task = tasks.get("pubmedqa")
    examples = [
        Example(id=str(i), source="", target=task.format_target(label), gold=label)
        for i, label in enumerate(["yes", "no", "maybe", "yes"])
    ]
    predictions = {
        0: "yes.",
        "1": "blah",
        "2": "the answer to the question given the context is maybe",
        "99": "no",
    }
    scores = tasks.score_predictions(task, examples, predictions)
    assert (scores["unknown_ids"], scores["missing"], scores["unparseable"]) == (1, 1, 1)
    assert scores["accuracy"] == 0.5


def test_bc5cdr_unknown_name_is_a_false_positive() -> None:
    task = tasks.get("bc5cdr")
    context = {"chemical2id": {"aspirin": "C1"}, "disease2id": {"fever": "D1"}}
    examples = [Example("p", "", "", {("C1", "D1")}, context)]
    text = (
        "the relation between aspirin and fever exists; the relation between foo and fever exists."
    )
    scores = tasks.score_predictions(task, examples, {"p": text})
    assert (scores["precision"], scores["recall"]) == (0.5, 1.0)


def test_triple_scores_empty_and_normalised() -> None:
    task = tasks.get("ddi")
    gold = [("tumor necrosis factor (tnf)", "receptor 1", "effect")]
    examples = [Example("a", "", "", gold), Example("b", "", "", [("x", "y", "int")])]
    text = "the interaction between tnf and receptor i is effect"
    scores = tasks.score_predictions(task, examples, {"a": text})
    assert scores["missing"] == 1
    assert scores["f1"] == 0.0 and scores["micro_f1"] == 0.0
    assert scores["f1_normalised"] == 0.5  # abbreviation + roman numeral match document a


# --------------------------------------------------------------------------------------------
# Custom tasks
# --------------------------------------------------------------------------------------------


def test_custom_relations_and_plain(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    rows = [
        {
            "id": 1,
            "text": "A binds B and C.",
            "relations": [{"head": "A", "relation": "binds", "tail": "B and C"}],
        },
        {"id": 2, "text": "Nothing.", "relations": []},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tasks.get("custom")
    examples = task.load("train", tmp_path)
    assert examples[0].target == "the relation between A and B and C is binds."
    assert examples[1].target == "there are no relations."
    scores = tasks.score_predictions(task, examples, {e.id: e.target for e in examples})
    assert scores["f1"] == scores["document_f1"] == 1.0

    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"id": "x", "text": "t", "target": "Hello world."}\n')
    task = tasks.get("custom")
    examples = task.load(str(plain))
    assert tasks.score_predictions(task, examples, {"x": "learned1 Hello world"})["accuracy"] == 1.0
    plain.write_text('{"id": "x", "text": "t", "target": "a"}\n{"id": "y", "text": "t"}\n')
    with pytest.raises(BioGPTError, match=r"plain.jsonl:2"):
        tasks.get("custom").load(str(plain))


# --------------------------------------------------------------------------------------------
# Token ids: samples, prompts, truncation
# --------------------------------------------------------------------------------------------


def test_encode_example_layout(tokenizer: Tokenizer) -> None:
    task = tasks.get("hoc")
    ex = Example("0", "Cells grow.", "the type of this document is empty.", {"empty"})
    with pytest.raises(BioGPTError, match="learned1"):
        tasks.encode_example(tokenizer, task, ex)
    (learned,) = tokenizer.add_tokens(task.prompt())
    ids, mask = tasks.encode_example(tokenizer, task, ex)
    source = tokenizer.encode("Cells grow.")[1:]
    target = tokenizer.encode(ex.target)[1:]
    assert ids == [2, *source, learned, *target, 2]
    assert mask == [0] + [1] * (len(ids) - 1)
    _, target_mask = tasks.encode_example(tokenizer, task, ex, target_only=True)
    assert target_mask == [0] * (2 + len(source)) + [1] * (len(target) + 1)
    assert tasks.encode_prompt(tokenizer, task, ex.source) == [2, *source, learned]
    assert tasks.prompt_tokens(3) == ["learned1", "learned2", "learned3"]


def test_source_truncation_ends_with_ellipsis(tokenizer: Tokenizer) -> None:
    text = "cells grow and divide in the tissue " * 20
    full = tokenizer.encode(text)[1:]
    cut = tasks.source_ids(tokenizer, text, 10)
    ellipsis = tokenizer.encode("...")[1:]
    assert len(cut) == 10 and cut[-len(ellipsis) :] == ellipsis
    assert cut[: 10 - len(ellipsis)] == full[: 10 - len(ellipsis)]
    assert tasks.source_ids(tokenizer, "short text", 10) == tokenizer.encode("short text")[1:]


# --------------------------------------------------------------------------------------------
# Registry and prediction files
# --------------------------------------------------------------------------------------------


def test_registry() -> None:
    assert set(tasks.names()) >= {
        "bc5cdr",
        "kd-dti",
        "ddi",
        "pubmedqa",
        "pubmedqa-rf",
        "hoc",
        "ner",
        "custom",
    }
    assert tasks.get("hoc").prompt_length == 1 and tasks.get("ddi").max_source_tokens == 640
    assert tasks.get("pubmedqa").max_source_tokens == 900
    with pytest.raises(BioGPTError, match="unknown task"):
        tasks.get("nope")
    with pytest.raises(BioGPTError, match="no split"):
        tasks.get("hoc").load("valid", DATA)


def test_predictions_files(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    tasks.write_predictions(path, {"1": "yes", "2": "no"})
    assert tasks.read_predictions(path) == {"1": "yes", "2": "no"}
    for bad, message in [
        ('{"id": 1, "prediction": "a"}\n{oops\n', "p.jsonl:2: not valid JSON"),
        ('{"id": 1}\n', 'p.jsonl:1: "prediction" must be a string'),
        ("[1, 2]\n", "p.jsonl:1: expected an object"),
        ('{"id": 1, "prediction": "a"}\n{"id": "1", "prediction": "b"}\n', "appears twice"),
    ]:
        path.write_text(bad)
        with pytest.raises(BioGPTError, match=message):
            tasks.read_predictions(path)
    with pytest.raises(BioGPTError, match="no such"):
        tasks.read_predictions(tmp_path / "missing.jsonl")


def test_jsonl_lines_end_at_newline_only(tmp_path):
    from biogpt.io import read_jsonl

    path = tmp_path / "r.jsonl"
    # A Unicode line separator inside a string, a CRLF ending, a blank line.
    path.write_text('{"text": "a\u2028b"}\r\n\n{"text": "c"}\n', encoding="utf-8")
    assert list(read_jsonl(path)) == [
        (f"{path}:1", {"text": "a\u2028b"}),
        (f"{path}:3", {"text": "c"}),
    ]
    path.write_text('{"text": "c"}\n{oops\n', encoding="utf-8")
    with pytest.raises(BioGPTError, match=r"r\.jsonl:2: not valid JSON"):
        list(read_jsonl(path))
    with pytest.raises(BioGPTError, match="cannot read"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
