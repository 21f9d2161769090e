"""Memory of loading a checkpoint: peak and held RSS for each dtype, each in a fresh process.

Writes a random model of the preset (fp32 safetensors, as the released weights convert
to) into a temporary directory, then loads it with `BioGPT.from_pretrained(dir, dtype=...)`
in a fresh process per dtype, decodes a few tokens (so that every weight has been read)
and prints the process's peak RSS (VmHWM) and what it holds then (VmRSS). safetensors
files are read tensor by tensor into the model's own memory, each cast to the requested
dtype as it is read, so no page of the file stays resident once its tensor is copied.

    python benchmarks/load_memory.py [--preset biogpt]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from biogpt import BioGPT
from biogpt.config import ModelConfig

DTYPES = ("fp32", "bf16", "int8")


def worker(directory: str, dtype: str) -> None:
    """In a fresh process: load, decode a few tokens, print peak and held RSS in bytes."""
    model = BioGPT.from_pretrained(directory, dtype=dtype)
    model.generate(torch.tensor([[2, 5, 6]]), max_new_tokens=4)  # every weight read once
    with open("/proc/self/status") as f:
        status = f.read()
    peak, held = (int(status.split(key)[1].split()[0]) * 1024 for key in ("VmHWM:", "VmRSS:"))
    print(json.dumps({"peak": peak, "held": held}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="biogpt")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        model = BioGPT(ModelConfig.from_name(args.preset)).eval()
        model.save_pretrained(directory, overwrite=True)
        size = (Path(directory) / "model.safetensors").stat().st_size
        del model
        print(f"{args.preset}: weights file {size / 1e6:.0f} MB (fp32 safetensors)")
        print(f"{'dtype':>6} {'peak MB':>8} {'held MB':>8}")
        for dtype in DTYPES:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", directory, dtype],
                capture_output=True,
                text=True,
                check=True,
            )
            info = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{dtype:>6} {info['peak'] / 1e6:>8.0f} {info['held'] / 1e6:>8.0f}")


if __name__ == "__main__":
    main()
