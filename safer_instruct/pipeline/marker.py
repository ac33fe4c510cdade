"""`python -m safer_instruct.pipeline.marker STEP_DIR --fingerprint F --outputs A B`: mark a step done.

Called by the Slurm job scripts after their stage exited 0 (the local runner does the same in
process). Exits 1, and writes no marker, when a declared output is missing: the job then fails and
Slurm cancels the jobs that depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from safer_instruct.pipeline import state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safer_instruct.pipeline.marker", description=__doc__)
    parser.add_argument("step_dir", type=Path)
    parser.add_argument("--fingerprint", required=True)
    # Default: the JSON list in SAFER_INSTRUCT_OUTPUTS that `safer-instruct run` puts in its job scripts.
    parser.add_argument("--outputs", nargs="*", default=None)
    parser.add_argument("--wall-s", type=float, default=None)
    args = parser.parse_args(argv)
    outputs = args.outputs if args.outputs is not None else json.loads(os.environ.get("SAFER_INSTRUCT_OUTPUTS") or "[]")
    missing = state.missing_outputs(args.step_dir, outputs)
    if missing:
        print(f"safer-instruct: error: the stage exited 0 but did not write {', '.join(missing)} "
              f"in {args.step_dir}", file=sys.stderr)  # fmt: skip
        return 1
    state.write_marker(args.step_dir, args.fingerprint, wall_s=args.wall_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
