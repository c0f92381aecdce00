"""Run one action in a fresh interpreter: `python -m stella_build.engine.executors.child`.

Reads a `sandbox.run_action` task as JSON on stdin, writes its result record as JSON on stdout.
Used by a dask worker that runs as a daemonic process (the default of `dask worker`'s nanny),
which multiprocessing forbids to start a pool: the interpreter is started with the scrubbed
environment (PYTHONHASHSEED=0 from its first instruction), then `worker_init` pins the rest.
"""
from __future__ import annotations

import json
import sys


def main() -> int:
    from stella_build.engine.sandbox import run_action, worker_init

    task = json.load(sys.stdin)
    worker_init()
    result = run_action(task)
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
