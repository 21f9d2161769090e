"""Reports of evaluation results: each number as `biogpt score` computes it, beside the
paper's, with a bootstrap interval, per-example samples, error kinds and plots.

    inputs      what an INPUT is (reproduce run, evaluate report, TASK:SPLIT:FILE) -> Source
    analysis    a Source scored, its answers parsed once, the per-example records
    bootstrap   percentile intervals over resampled examples (documents, HoC's sentences)
    breakdown   error kinds, per-type / per-label / confusion tables
    paper       the paper's numbers, on score's 0-1 scale
    plots       the figures (matplotlib, the `plot` extra, imported when drawing)
    render      report.md and the self-contained report.html
    build       `write_report`, which the `biogpt report` and `biogpt reproduce` commands call
    provenance  the package's version and commit, and the machine
"""
