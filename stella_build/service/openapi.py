"""Print the service's OpenAPI document: `python -m stella_build.service.openapi > docs/openapi.json`.

The committed docs/openapi.json must equal what GET /.well-known/openapi serves
(tests/service/test_api.py checks it byte for byte).
"""
from __future__ import annotations

import sys


def main() -> int:
    from stella_build.service.app import create_app, openapi_text

    sys.stdout.write(openapi_text(create_app()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
