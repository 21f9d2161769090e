"""Reports of evaluation results: tables, intervals and plots beside the paper's numbers."""
