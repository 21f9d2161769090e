"""Relation extraction as generation: BC5CDR, KD-DTI and DDI (facts section 3).

The target lists the document's relations as statements built from a template, joined by
"; " with a final ".":

    the relation between {head} and {tail} exists                       (BC5CDR)
    the interaction between {head} and {tail} is {relation}             (KD-DTI, DDI)

Parsing reverses this. A name may itself contain the template's separators ("head and
neck cancer"), so a statement can have several readings; the parser lists them all in
the order the release's greedy regular expression would prefer and picks the first one
with the most evidence (names found in the split's name table for BC5CDR, in the source
text for KD-DTI/DDI). Without evidence it agrees with the release's regex.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.tasks import metrics
from biogpt.tasks.base import (
    Example,
    Hyperparameters,
    Parsed,
    Task,
    check_split,
    clean_answer,
    data_file,
)

# A reading of one statement: the template's field names -> text.
Reading = dict[str, str]

MAX_READINGS = 64  # bound the readings of one statement (pathological text)


class Template:
    """A statement template with `{field}` placeholders, formatted and parsed back."""

    def __init__(self, text: str, fields: Sequence[str]) -> None:
        pieces = re.split(r"\{(\w+)\}", text)
        self.text = text
        self.literals = pieces[0::2]  # literal text around the fields (len = fields + 1)
        self.fields = pieces[1::2]
        missing = [f for f in fields if f not in self.fields]
        unknown = [f for f in self.fields if f not in fields]
        if missing or unknown or len(set(self.fields)) != len(self.fields):
            raise BioGPTError(
                f"template {text!r}: needs each of {{{'}, {'.join(fields)}}} exactly once"
            )
        if any(not lit for lit in self.literals[1:-1]):
            raise BioGPTError(f"template {text!r}: two fields need text between them")

    def format(self, **values: str) -> str:
        """The statement for one relation."""
        return self.text.format(**values)

    def readings(self, statement: str) -> list[Reading]:
        """Every way to read `statement` as this template, fields non-empty and stripped,
        ordered as a greedy regex (each field as long as possible, left to right) would
        prefer them. Empty when it does not fit."""
        if not statement.startswith(self.literals[0]) or not statement.endswith(self.literals[-1]):
            return []
        out: list[Reading] = []
        self._extend(statement, len(self.literals[0]), 0, {}, out)
        return out

    def _extend(self, text: str, start: int, k: int, done: Reading, out: list[Reading]) -> None:
        if len(out) >= MAX_READINGS:
            return
        after = self.literals[k + 1]
        if k == len(self.fields) - 1:  # the last field runs up to the final literal
            end = len(text) - len(after)
            ends = [end] if end > start else []
        else:
            ends = [m.start() for m in re.finditer(re.escape(after), text[start + 1 :])]
            ends = [start + 1 + e for e in reversed(ends)]  # longest field first
        for end in ends:
            value = text[start:end].strip()
            if not value:
                continue
            reading = {**done, self.fields[k]: value}
            if k == len(self.fields) - 1:
                out.append(reading)
            else:
                self._extend(text, end + len(after), k + 1, reading, out)


def join_statements(statements: Sequence[str]) -> str:
    """Statements joined by "; " with a final "." (the release's target format)."""
    return "; ".join(statements) + "."


def parse_statements(text: str, template: Template, evidence: Callable[[Reading], int]) -> Parsed:
    """Read an answer of `template` statements joined by ";" into a list of readings.

    The release splits on ";" and keeps what its regex matches; likewise a piece that fits
    no reading is skipped and counted in `unparseable`. Of several readings the first with
    the highest `evidence` wins.

    An answer with no text left once cleaned (empty, or only echoed prompt tokens) is one
    unparseable piece: the release reads it as "no relations", but these formats have no
    way to say that (the release drops documents without relations from every split), so
    such an answer is a failure to answer, not a prediction.
    """
    answer = clean_answer(text)
    if not answer:
        return Parsed([], 1)
    readings: list[Reading] = []
    bad = 0
    for piece in answer.split(";"):
        piece = piece.strip()
        if not piece:
            continue
        options = template.readings(piece)
        if not options:
            bad += 1
            continue
        readings.append(max(options, key=evidence))  # max keeps the first of equals
    return Parsed(readings, bad)


def title_and_abstract(title: str, abstract: str) -> str:
    """The release joins title and abstract with " " if the title ends in a non-word
    character (usually "."), else with ". "."""
    return title + (" " if re.search(r"\W$", title) else ". ") + abstract


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; a one-line error if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BioGPTError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise BioGPTError(f"{path}: expected a JSON object")
    return data


# --------------------------------------------------------------------------------------------
# BC5CDR: chemical-induced disease
# --------------------------------------------------------------------------------------------


def longest_names(name2id: Mapping[str, str]) -> dict[str, str]:
    """MeSH id -> its longest mention (the first of equally long ones), as the release
    names each id in BC5CDR targets."""
    names: dict[str, str] = {}
    for name, mesh in name2id.items():
        if mesh not in names or len(name) > len(names[mesh]):
            names[mesh] = name
    return names


class BC5CDR(Task):
    """Chemical-induced disease relations (BioCreative V CDR), scored on MeSH id pairs."""

    name = "bc5cdr"
    prompt_length = 9
    max_source_tokens = 640
    hyperparameters = Hyperparameters(
        lr=1e-5, warmup_updates=100, max_epochs=100, average_last_checkpoints=5
    )
    template = Template("the relation between {head} and {tail} exists", ("head", "tail"))

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Example]:
        """Documents of `{split}.json`; each example's context holds the split's
        name -> id tables from `{split}.entities.json`."""
        check_split(self, split)
        documents = read_json(data_file(data_dir, "bc5cdr", f"{split}.json"))
        tables = read_json(data_file(data_dir, "bc5cdr", f"{split}.entities.json"))
        context = {"chemical2id": tables["chemical2id"], "disease2id": tables["disease2id"]}
        examples = []
        for pmid, doc in documents.items():
            if not doc.get("relations"):
                continue  # the release drops documents without relations
            examples.append(
                Example(
                    id=str(pmid),
                    source=self.format_source(doc),
                    target=self.format_target(doc),
                    gold={(r["chemical"], r["disease"]) for r in doc["relations"]},
                    context=context,
                )
            )
        return examples

    @staticmethod
    def format_source(doc: Mapping[str, Any]) -> str:
        """Lowercased title + abstract."""
        return title_and_abstract(doc["title"], doc["abstract"]).lower()

    def source_of_text(self, text: str) -> str:
        return text.lower()  # a raw text stands for the whole lowercased document

    def format_target(self, doc: Mapping[str, Any]) -> str:
        """One statement per relation, in the file's order, each id named by its longest
        mention in the document."""
        chemicals = longest_names(doc["chemical2id"])
        diseases = longest_names(doc["disease2id"])
        return join_statements(
            [
                self.template.format(head=chemicals[r["chemical"]], tail=diseases[r["disease"]])
                for r in doc["relations"]
            ]
        )

    def parse(self, text: str, example: Example) -> Parsed:
        """[(chemical name, disease name), ...]; readings whose names the split's tables
        know are preferred. An empty answer is unparseable (see `parse_statements`)."""
        chemicals = example.context.get("chemical2id", {})
        diseases = example.context.get("disease2id", {})

        def known(reading: Reading) -> int:
            return (reading["head"] in chemicals) + (reading["tail"] in diseases)

        parsed = parse_statements(text, self.template, known)
        return Parsed([(r["head"], r["tail"]) for r in parsed.value], parsed.unparseable)

    def score(self, examples: Sequence[Example], parsed: Mapping[str, Parsed]) -> dict[str, float]:
        """Micro P/R/F1 over the set of (pmid, chemical id, disease id); a name the split's
        table does not know maps to "-1" and so is a false positive (release behaviour)."""
        predicted: set[tuple[str, str, str]] = set()
        gold: set[tuple[str, str, str]] = set()
        for example in examples:
            chemicals = example.context["chemical2id"]
            diseases = example.context["disease2id"]
            for chemical, disease in parsed[example.id].value:
                pair = (chemicals.get(chemical.lower(), "-1"), diseases.get(disease.lower(), "-1"))
                predicted.add((example.id, *pair))
            gold.update((example.id, *pair) for pair in example.gold)
        prf = metrics.set_prf(predicted, gold)
        return {"precision": prf.precision, "recall": prf.recall, "f1": prf.f1}


# --------------------------------------------------------------------------------------------
# KD-DTI and DDI: (drug, target, interaction) triples, hard match
# --------------------------------------------------------------------------------------------

Triple = tuple[str, str, str]  # (drug, target, interaction)


def canonical(text: str) -> str:
    """Hard-match form of one field: lowercase, spaces removed (release evaluation)."""
    return text.strip().lower().replace(" ", "")


# The release turns one trailing digit into a roman numeral. It writes the numeral in upper
# case after lowercasing everything else, so "type 1" never meets "type i"; we write it in
# lower case so that the variant does what it is meant to.
_ROMAN = dict(
    zip("0123456789", ["0", "i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix"], strict=True)
)


def _normalise(text: str) -> str:
    """The release's name normalisation: a trailing digit (not part of a longer number)
    to a roman numeral, "-type" dropped, then every non-alphanumeric character dropped."""
    if len(text) > 2 and text[-1].isdigit() and not text[-2].isdigit():
        text = text[:-1] + _ROMAN[text[-1]]
    return re.sub(r"[^a-z0-9]+", "", text.replace("-type", ""))


def _body(text: str) -> str:
    """`name (abbr)` -> normalised `name` (release: the text before a final parenthesis)."""
    if "(" in text and text.endswith(")"):
        return _normalise(text[: text.rfind("(")])
    return _normalise(text)


def _abbreviation(text: str) -> str:
    """`name (abbr)` -> normalised `abbr` (release: the text inside a final parenthesis)."""
    if "(" in text and text.endswith(")"):
        return _normalise(text[text.rfind("(") + 1 : -1])
    return _normalise(text)


def score_triples(
    examples: Sequence[Example], predictions: Mapping[str, Sequence[Triple]]
) -> dict[str, float]:
    """KD-DTI/DDI metrics of predicted triples against each example's gold triples.

    - precision/recall/f1: per-document hard match on canonical triples, averaged over
      documents (the F1 the paper reports is this mean of per-document F1s);
    - micro_precision/micro_recall/micro_f1: over all (document, triple) pairs;
    - *_normalised: the release's normalised variant: per document the better of matching
      the bodies and matching the abbreviations of `name (abbr)` fields, after
      `_normalise`; P and R each take their own maximum, as in the release.
    """
    hard, normalised = [], []
    all_pred: set[tuple[str, tuple[str, ...]]] = set()
    all_gold: set[tuple[str, tuple[str, ...]]] = set()
    for example in examples:
        pred = {tuple(map(canonical, t)) for t in predictions.get(example.id, [])}
        gold = {tuple(map(canonical, t)) for t in example.gold}
        hard.append(metrics.document_prf(pred, gold))
        all_pred.update((example.id, t) for t in pred)
        all_gold.update((example.id, t) for t in gold)
        variants = [
            metrics.document_prf({tuple(map(f, t)) for t in pred}, {tuple(map(f, t)) for t in gold})
            for f in (_body, _abbreviation)
        ]
        p = max(v.precision for v in variants)
        r = max(v.recall for v in variants)
        normalised.append(metrics.PRF(p, r, metrics.f1_of(p, r)))
    mean = metrics.mean_document_prf(hard)
    micro = metrics.set_prf(all_pred, all_gold)
    mean_norm = metrics.mean_document_prf(normalised)
    return {
        "precision": mean.precision,
        "recall": mean.recall,
        "f1": mean.f1,
        "micro_precision": micro.precision,
        "micro_recall": micro.recall,
        "micro_f1": micro.f1,
        "precision_normalised": mean_norm.precision,
        "recall_normalised": mean_norm.recall,
        "f1_normalised": mean_norm.f1,
    }


def order_by_drug(triples: Sequence[Mapping[str, str]], source: str) -> list[Mapping[str, str]]:
    """Triples sorted (stably) by where the drug first appears in the lowercased source;
    a drug not found sorts first (position -1).

    The release looks up the drug as written, in the lowercased text, so a drug with a
    capital letter is never found and sorts first; we look up the lowercased drug, which
    is what the ordering is for (facts: "ordered by where the drug first appears")."""
    return sorted(triples, key=lambda t: source.find(t["drug"].lower()))


class DrugTriples(Task):
    """Shared reader, formatting, parser and metric of KD-DTI and DDI."""

    prompt_length = 9
    max_source_tokens = 640
    main_metric = "f1"
    folder: str
    template = Template(
        "the interaction between {head} and {tail} is {relation}", ("head", "tail", "relation")
    )

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Example]:
        """Documents of `{split}.json` that have triples (the release drops the rest)."""
        check_split(self, split)
        documents = read_json(data_file(data_dir, self.folder, f"{split}.json"))
        examples = []
        for key, doc in documents.items():
            if not doc.get("triples"):
                continue
            source = self.format_source(doc)
            examples.append(
                Example(
                    id=str(key),
                    source=source,
                    target=self.format_target(doc["triples"], source),
                    gold=[
                        (t["drug"].lower(), t["target"].lower(), t["interaction"].lower())
                        for t in doc["triples"]
                    ],
                )
            )
        return examples

    def format_source(self, doc: Mapping[str, Any]) -> str:
        """Lowercased title + abstract (KD-DTI); DDI overrides it."""
        return title_and_abstract(doc["title"], doc["abstract"]).lower()

    def source_of_text(self, text: str) -> str:
        return text.lower()  # a raw text stands for the whole lowercased document

    def format_target(self, triples: Sequence[Mapping[str, str]], source: str) -> str:
        """One lowercased statement per triple, ordered by the drug's first appearance."""
        return join_statements(
            [
                self.template.format(
                    head=t["drug"].lower(),
                    tail=t["target"].lower(),
                    relation=t["interaction"].lower(),
                )
                for t in order_by_drug(triples, source)
            ]
        )

    def parse(self, text: str, example: Example) -> Parsed:
        """[(drug, target, interaction), ...]; readings whose names occur in the source
        are preferred. An empty answer is unparseable (see `parse_statements`)."""

        def found(reading: Reading) -> int:
            return (reading["head"] in example.source) + (reading["tail"] in example.source)

        parsed = parse_statements(text, self.template, found)
        triples = [(r["head"], r["tail"], r["relation"]) for r in parsed.value]
        return Parsed(triples, parsed.unparseable)

    def score(self, examples: Sequence[Example], parsed: Mapping[str, Parsed]) -> dict[str, float]:
        """See `score_triples`."""
        return score_triples(examples, {key: p.value for key, p in parsed.items()})


class KDDTI(DrugTriples):
    """KD-DTI drug-target interactions (the training split is not distributed)."""

    name = "kd-dti"
    folder = "kd-dti"
    hyperparameters = Hyperparameters(
        lr=1e-5, warmup_updates=1000, max_epochs=30, average_last_checkpoints=5
    )


class DDI(DrugTriples):
    """DDIExtraction 2013 drug-drug interactions (mechanism, effect, advise, int)."""

    name = "ddi"
    folder = "ddi"
    hyperparameters = Hyperparameters(
        lr=1e-4, warmup_updates=500, max_epochs=100, average_last_checkpoints=5
    )

    def format_source(self, doc: Mapping[str, Any]) -> str:
        """The lowercased abstract (DDI documents have no title)."""
        return doc["abstract"].lower()


# --------------------------------------------------------------------------------------------
# The original BC5CDR corpus in PubTator format
# --------------------------------------------------------------------------------------------


def read_pubtator(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a PubTator file into the structure of the shared `bc5cdr/{split}.json`:
    `{pmid: {title, abstract, relations: [{chemical, disease}], chemical2id, disease2id}}`.

    The format: per document a `pmid|t|title` line, a `pmid|a|abstract` line, mention
    lines `pmid<TAB>start<TAB>end<TAB>text<TAB>Chemical|Disease<TAB>MeSH id[<TAB>...]` and
    relation lines `pmid<TAB>CID<TAB>chemical id<TAB>disease id`, documents separated by
    blank lines. Name keys are lowercased mentions, a later mention overriding an earlier
    one with the same text; a mention without an id maps to "-1".
    """
    path = Path(path)
    documents: dict[str, dict[str, Any]] = {}

    def document(pmid: str) -> dict[str, Any]:
        return documents.setdefault(
            pmid,
            {"title": "", "abstract": "", "relations": [], "chemical2id": {}, "disease2id": {}},
        )

    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            head = re.match(r"(\d+)\|([ta])\|(.*)", line)
            if head:
                pmid, kind, text = head.groups()
                document(pmid)["title" if kind == "t" else "abstract"] = text
                continue
            cells = line.split("\t")
            if len(cells) >= 4 and cells[1] == "CID":
                document(cells[0])["relations"].append({"chemical": cells[2], "disease": cells[3]})
            elif len(cells) >= 6 and cells[4] in ("Chemical", "Disease"):
                table = document(cells[0])[
                    "chemical2id" if cells[4] == "Chemical" else "disease2id"
                ]
                ids = cells[5].split("|")
                if len(ids) == 1:
                    table[cells[3].lower()] = cells[5] or "-1"
                elif len(cells) >= 7 and len(cells[6].split("|")) == len(ids):
                    # A composite mention ("ocular and auditory toxicity" -> two ids): like
                    # the shared JSON, name each id by its part listed in the 7th column.
                    for part, mesh in zip(cells[6].split("|"), ids, strict=True):
                        table[part.lower()] = mesh
                # A composite mention without its parts is left out, as the JSON does.
            else:
                raise BioGPTError(f"{path}:{number}: not a PubTator line")
    return documents
