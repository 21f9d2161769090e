"""`biogpt reproduce`: the paper's recipe per task, fine-tune to score, resumable."""
