"""What the Offline Kit (rules/formats/kit.py) and the devportal:offline bundle
(rules/formats/devportal.py) share: the safe-path rule, `checksums.txt` (write and strict parse),
and the POSIX shell helpers their checkers (`verify-kit.sh`, `verify-offline.sh`) begin with.

Both formats keep their own names and error classes (KitFormatError, DevportalFormatError) and
their own wording ("kit path", "bundle path"); these functions take them as arguments, so each
format's output bytes and messages are exactly what they were before this module existed.

checksums.txt: first line `root <sha256>`, the sha256 of the lines after it; then
`<sha256>  <path>` per file, sorted by path bytes (the lines `sha256sum -c` reads).
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

from stella_build.engine.rule_api import sha256_hex

__all__ = ["MAX_PATH", "HEX64", "is_safe_path", "check_path", "sorted_paths", "checksums_txt",
           "parse_checksums", "SH_PICK_SHA", "SH_HELPERS"]

# Paths both formats may hold: relative, normalized, from a conservative character set.
_SEGMENT = re.compile(r"^[A-Za-z0-9._+@=-]+$")
MAX_PATH = 1024
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_safe_path(path: object) -> bool:
    """Whether `path` is relative POSIX, normalized (no '', '.', '..' segment), at most MAX_PATH
    characters, with segments from [A-Za-z0-9._+@=-]."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        return False
    return all(_SEGMENT.match(seg) and seg not in (".", "..") for seg in path.split("/"))


def check_path(path: object, where: str, *, error: type[ValueError], noun: str) -> str:
    """`path` when is_safe_path, else `error` naming `where` ("... is not a safe <noun> path")."""
    if not is_safe_path(path):
        raise error(f"{where}: {path!r} is not a safe {noun} path (relative, normalized, "
                    "characters A-Z a-z 0-9 . _ + @ = -)")
    return path  # type: ignore[return-value]


def sorted_paths(paths: Iterable[str]) -> list[str]:
    """Paths sorted by their UTF-8 bytes (the order of `LC_ALL=C sort`)."""
    return sorted(paths, key=lambda p: p.encode())


def checksums_txt(digests: Mapping[str, str], *, where: str, error: type[ValueError], noun: str) -> bytes:
    """`root <sha256 of the rest>` then `<sha256>  <path>` per file of {path: sha256 hex}, sorted
    by path bytes; `error` (naming `where`) for an unsafe path."""
    body = "".join(f"{digests[p]}  {check_path(p, where, error=error, noun=noun)}\n"
                   for p in sorted_paths(digests)).encode()
    return f"root {sha256_hex(body)}\n".encode() + body


def parse_checksums(data: bytes, name: str, *, error: type[ValueError], noun: str) -> tuple[str, dict[str, str]]:
    """(root, {path: sha256}) of a checksums.txt, checked strictly: ASCII, newline-terminated, the
    root matches the lines after it, every line is `<64 hex>  <safe path>`, paths strictly ascending
    (sorted, no duplicate). Raises `error` naming `name` and the line."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise error(f"{name}: not ASCII") from None
    if not text.endswith("\n"):
        raise error(f"{name}: does not end with a newline")
    first, _, body = text.partition("\n")
    if not first.startswith("root ") or not HEX64.match(first[5:]):
        raise error(f"{name}: the first line is not 'root <sha256>'")
    if sha256_hex(body.encode()) != first[5:]:
        raise error(f"{name}: root {first[5:]} does not match the lines after it")
    out: dict[str, str] = {}
    previous = b""
    for n, line in enumerate(body.splitlines(), 2):
        digest, sep, path = line.partition("  ")
        if not sep or not HEX64.match(digest):
            raise error(f"{name} line {n}: not '<sha256>  <path>'")
        check_path(path, f"{name} line {n}", error=error, noun=noun)
        if path.encode() <= previous:
            raise error(f"{name} line {n}: {path} is out of order or repeated")
        previous = path.encode()
        out[path] = digest
    return first[5:], out


# -- shell ----------------------------------------------------------------------------------------
# The helpers both POSIX checkers define, in this order, right after their fail/usage/note
# functions: pick sha256sum or shasum (-a 256), then (after each script's own option parsing and
# temporary directory) sha_stdin, check_hex and check_path. Text constants spliced into the
# scripts: a script's bytes are unchanged by where its text comes from.

SH_PICK_SHA = r"""if command -v sha256sum >/dev/null 2>&1; then
	SHA=sha256sum
elif command -v shasum >/dev/null 2>&1; then
	SHA="shasum -a 256"
else
	fail "neither sha256sum nor shasum is installed"
fi
"""

SH_HELPERS = r"""sha_stdin() {  # sha256 hex of standard input
	set -- $($SHA)
	printf '%s\n' "$1"
}

check_hex() {  # $1 value, $2 where
	case $1 in
	*[!0-9a-f]*|'') fail "$2: '$1' is not a sha256" ;;
	esac
	[ ${#1} -eq 64 ] || fail "$2: '$1' is not a sha256"
}

check_path() {  # $1 a path from a list, $2 the list: relative, normalized, safe characters only
	case $1 in
	''|/*|*//*|*/|./*|../*|*/./*|*/../*|.|..|*/.|*/..) fail "$2: bad path '$1'" ;;
	*[!A-Za-z0-9._+@=/-]*) fail "$2: bad character in path '$1'" ;;
	esac
}
"""
