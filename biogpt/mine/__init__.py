"""Mining the literature: fine-tuned task models over PubMed files into a store of results
with provenance, each document done exactly once per model (`pipeline`, `store`), and what
the store holds read back as queries and exports (`export`)."""
