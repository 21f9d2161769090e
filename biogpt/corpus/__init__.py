"""Pretraining text: documents read from MEDLINE XML, JSON lines or plain text (`readers`),
tokenised into binary token shards that training streams from (`shards`)."""

from biogpt.corpus.readers import (
    Document,
    evaluation_test_pmids,
    exclude,
    read_documents,
    read_jsonl,
    read_pmid_list,
    split_of,
)

__all__ = [
    "Document",
    "evaluation_test_pmids",
    "exclude",
    "read_documents",
    "read_jsonl",
    "read_pmid_list",
    "split_of",
]
