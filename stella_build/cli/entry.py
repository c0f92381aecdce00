"""Console-script entry point: try the no-op memo (noop.py) before importing the full CLI."""
from __future__ import annotations

import sys


def main() -> int:
    from stella_build.cli.noop import fast_main
    code = fast_main(sys.argv[1:])
    if code is not None:
        return code
    from stella_build.cli.main import main as full_main

    return full_main()


if __name__ == "__main__":
    sys.exit(main())
