"""The data commands end to end: learn-vocab and binarize from MEDLINE XML and JSONL."""

from __future__ import annotations

import json

from test_corpus import medline_files  # noqa: F401  (a fixture)

from biogpt.cli import main
from biogpt.corpus.shards import TokenShards
from biogpt.tokenizer import Tokenizer


def test_learn_vocab_then_binarize(medline_files, tmp_path, capsys) -> None:  # noqa: F811
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"pmid": str(100 + i), "title": f"Study {i} of aspirin.",
                        "abstract": "Aspirin inhibits platelet aggregation in patients."})
            + "\n"
            for i in range(20)
        )
    )  # fmt: skip
    inputs = [str(p) for p in medline_files] + [str(jsonl)]
    assert main(["learn-vocab", "--input", *inputs, "--merges", "50", "--out",
                 str(tmp_path / "vocab")]) == 0  # fmt: skip
    tokenizer = Tokenizer.from_pretrained(tmp_path / "vocab")
    assert len(tokenizer) % 8 == 0
    assert tokenizer.unk_id not in tokenizer.encode("Aspirin inhibits platelet aggregation.")

    exclude = tmp_path / "exclude.txt"
    exclude.write_text("101\n102\n")
    out = tmp_path / "shards"
    assert main(["binarize", "--input", *inputs, "--tokenizer", str(tmp_path / "vocab"),
                 "--out", str(out), "--exclude", str(exclude), "--workers", "1",
                 "--quiet"]) == 0  # fmt: skip
    shards = TokenShards(out, "train")
    # MEDLINE gives 5 documents (one empty record skipped, one deleted, one superseded),
    # the JSONL 20, minus the 2 excluded.
    assert shards.documents == 5 + 20 - 2
    stream = shards.read(0, len(shards)).tolist()
    assert stream.count(tokenizer.eos_id) == shards.documents
    assert "aspirin" in tokenizer.decode(stream).lower()


def test_data_commands_refuse_bad_inputs(tmp_path, capsys) -> None:
    missing = tmp_path / "nope.xml"
    assert main(["learn-vocab", "--input", str(missing), "--merges", "5", "--out",
                 str(tmp_path / "v")]) == 2  # fmt: skip
    assert str(missing) in capsys.readouterr().err
    odd = tmp_path / "corpus.pdf"
    odd.write_text("x")
    assert main(["binarize", "--input", str(odd), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "corpus.pdf" in err and len(err.strip().splitlines()) == 1
