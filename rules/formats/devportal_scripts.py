"""The texts a devportal:offline bundle carries for people without stella-build: `verify-offline.sh`
and `instructions-portable.txt` (docs/devportal.md).

`verify-offline.sh` runs under `dash` (no bash features), uses `tar` and `sha256sum` (or `shasum`)
plus POSIX utilities (`find`, `sort`, `comm`, `sed`, `grep`, `mktemp`, `tail`, `wc`) and never the
network. It checks integrity only; the signature (manifest.dsse.json) is checked by cosign or
`stella-build devportal verify --key`, as instructions-portable.txt says. The texts are constants:
the same bytes in every bundle of this format version (listed in checksums.txt like any other file;
tests/test_devportal.py runs the script under dash).
"""
from __future__ import annotations

from stella_build.rules.formats.checksums import SH_HELPERS, SH_PICK_SHA

from stella_build.rules.formats.devportal import ARCHIVE, DSSE, MANIFEST, PREDICATE_TYPE, PROVENANCE, PUBLIC_KEY

__all__ = ["verify_script", "instructions"]

# Why `sha256sum -c` and not one process per file: it reads the "<sha256>  <path>" lines
# checksums.txt already holds (GNU coreutils, busybox and perl's shasum alike) in one process,
# and names every file that does not match.
_VERIFY_OFFLINE_SH = r"""#!/bin/sh
# verify-offline.sh: check a stella-build devportal:offline bundle without the network, with a POSIX
# shell, tar and sha256sum (or shasum).
#
#   sh verify-offline.sh [PATH]
#
# PATH (default: the directory holding this script) is an unpacked bundle (a directory holding
# checksums.txt), @ARCHIVE@, or a directory holding that archive (a build's output directory):
#   - the archive must match @ARCHIVE@.sha256 when that file is beside it; its members must be
#     regular files with safe relative names; it is unpacked into a temporary directory (removed
#     at the end) and checked as an unpacked bundle;
#   - in an unpacked bundle, the first line of checksums.txt, "root <sha256>", must be the sha256 of
#     the lines after it; every listed file must exist and match; no other file may be present
#     (besides the archive, its .sha256 and @PROVENANCE@ of a build's output directory); nothing
#     may be a link or a special file.
# The signature of manifest.json (@DSSE@, signed bundles) is checked with cosign or stella-build:
# see instructions-portable.txt.
# Exit status: 0 verified, 1 a check failed (the file is named), 2 usage.
set -eu
LC_ALL=C
export LC_ALL
prog=verify-offline
archive_name=@ARCHIVE@
signed=0

fail() { printf '%s: FAIL: %s\n' "$prog" "$*" >&2; exit 1; }
usage() { printf '%s: %s\nusage: sh verify-offline.sh [PATH]\n' "$prog" "$*" >&2; exit 2; }
note() { printf '%s: %s\n' "$prog" "$*"; }

""" + SH_PICK_SHA + r"""
[ $# -le 1 ] || usage "give one PATH"
if [ $# -eq 1 ]; then
	target=$1
else
	case $0 in */*) target=${0%/*} ;; *) target=. ;; esac
fi
[ -e "$target" ] || usage "$target: no such file or directory"

work=$(mktemp -d "${TMPDIR:-/tmp}/verify-offline.XXXXXX") || fail "cannot create a temporary directory"
trap 'rm -rf "$work"' EXIT
trap 'exit 1' HUP INT TERM

""" + SH_HELPERS + r"""
verify_tree() {  # $1 an unpacked bundle; $2 "build" when the archive and its sidecars may be beside it
	dir=$1
	list=$dir/checksums.txt
	[ -f "$list" ] && [ ! -h "$list" ] || fail "checksums.txt is missing in $dir"
	IFS= read -r first <"$list" || fail "checksums.txt is empty"
	case $first in
	"root "*) root=${first#root } ;;
	*) fail "checksums.txt: the first line is not 'root <sha256>'" ;;
	esac
	check_hex "$root" "checksums.txt root"
	[ "$(tail -n +2 "$list" | sha_stdin)" = "$root" ] || fail "checksums.txt: root does not match the lines after it"
	n=0
	while IFS= read -r line; do
		n=$((n + 1))
		[ "$n" -eq 1 ] && continue
		hex=${line%%  *}
		path=${line#*  }
		[ "$hex  $path" = "$line" ] || fail "checksums.txt line $n: not '<sha256>  <path>'"
		check_hex "$hex" "checksums.txt line $n"
		check_path "$path" "checksums.txt line $n"
		[ -f "$dir/$path" ] && [ ! -h "$dir/$path" ] || fail "$path is missing (listed in checksums.txt)"
	done <"$list"
	listed=$((n - 1))
	tail -n +2 "$list" | sed 's/^[0-9a-f]*  //' >"$work/listed.raw"
	sort -c -u "$work/listed.raw" 2>/dev/null || fail "checksums.txt: paths are not sorted or not unique"
	odd=$(cd "$dir" && find . ! -type f ! -type d -print | head -n 1)
	[ -z "$odd" ] || fail "${odd#./}: links and special files are not allowed in a bundle"
	if ! (cd "$dir" && tail -n +2 checksums.txt | $SHA -c - >"$work/check.log" 2>&1); then
		bad=$(grep -v ': OK$' "$work/check.log" | sed -n 's/: FAILED.*$//p' | head -n 1)
		[ -n "$bad" ] || bad=$(grep -v ': OK$' "$work/check.log" | head -n 1)
		fail "$bad does not match checksums.txt"
	fi
	{ echo checksums.txt; cat "$work/listed.raw"; } | sort >"$work/listed"
	(cd "$dir" && find . -type f -print | sed 's|^\./||' | sort) >"$work/found"
	if [ "${2:-}" = build ]; then
		grep -v -x -e "$archive_name" -e "$archive_name.sha256" -e "@PROVENANCE@" -e '.*\.keyless\.sigstore\.json' \
			"$work/found" >"$work/found.1" || true
		mv "$work/found.1" "$work/found"
	fi
	extra=$(comm -23 "$work/found" "$work/listed" | head -n 1)
	[ -z "$extra" ] || fail "$extra is not listed in checksums.txt"
	note "$listed files match checksums.txt (root $root)"
	[ ! -f "$dir/@DSSE@" ] || signed=1
}

verify_archive() {  # $1 the archive
	archive=$1
	name=${archive##*/}
	case $archive in */*) beside=${archive%/*} ;; *) beside=. ;; esac
	if [ -f "$archive.sha256" ]; then
		IFS= read -r want <"$archive.sha256" || fail "$name.sha256 is empty"
		[ "$want" = "${want%%  *}  $name" ] || fail "$name.sha256: not '<sha256>  $name'"
		want=${want%%  *}
		check_hex "$want" "$name.sha256"
		[ "$(sha_stdin <"$archive")" = "$want" ] || fail "$name does not match $name.sha256"
		note "$name matches $name.sha256"
	fi
	tar -tvzf "$archive" >"$work/members.v" 2>"$work/tar.log" || fail "$name: damaged archive ($(head -n 1 "$work/tar.log"))"
	tar -tzf "$archive" >"$work/members" 2>"$work/tar.log" || fail "$name: damaged archive ($(head -n 1 "$work/tar.log"))"
	while IFS= read -r member; do
		check_path "$member" "$name"
	done <"$work/members"
	kinds=$(cut -c1 "$work/members.v" | sort -u | tr -d '\n')
	[ "$kinds" = "-" ] || fail "$name: holds members that are not regular files"
	mkdir "$work/tree"
	tar -xzf "$archive" -C "$work/tree" 2>"$work/tar.log" || fail "$name: cannot be unpacked ($(head -n 1 "$work/tar.log"))"
	note "$name unpacked"
	verify_tree "$work/tree"
}

if [ -d "$target" ]; then
	if [ -f "$target/$archive_name" ]; then
		verify_archive "$target/$archive_name"
		[ ! -f "$target/checksums.txt" ] || verify_tree "$target" build
	elif [ -f "$target/checksums.txt" ]; then
		verify_tree "$target"
	else
		usage "$target holds neither checksums.txt nor $archive_name"
	fi
else
	verify_archive "$target"
fi
note "OK: the bundle is intact"
if [ "$signed" = 1 ]; then
	note "signed: check who signed it with cosign (see instructions-portable.txt): cosign verify-blob-attestation --key KEY --signature @DSSE@ --type @PREDICATE@ --insecure-ignore-tlog=true @MANIFEST@"
fi
"""


def verify_script() -> bytes:
    """verify-offline.sh (mode 0755 in the archive)."""
    text = _VERIFY_OFFLINE_SH
    for marker, value in (("@ARCHIVE@", ARCHIVE), ("@PROVENANCE@", PROVENANCE), ("@DSSE@", DSSE),
                          ("@PREDICATE@", PREDICATE_TYPE), ("@MANIFEST@", MANIFEST)):
        text = text.replace(marker, value)
    return text.encode()


def instructions(*, signed: bool, sdk_wheel: str, portal_entry: str = "portal/index.html") -> bytes:
    """instructions-portable.txt: what to do with the bundle on an air-gapped machine."""
    sign = (f"""
3. Check who made it (signed bundles). With the publisher's public key, obtained separately
   ({PUBLIC_KEY} inside the bundle proves integrity, not origin):
     cosign verify-blob-attestation --key publisher.pub --signature {DSSE} \\
       --type {PREDICATE_TYPE} --insecure-ignore-tlog=true {MANIFEST}
   or, with stella-build:
     stella-build devportal verify {ARCHIVE} --key publisher.pub
""" if signed else f"""
3. This bundle is not signed: {DSSE} is absent. Get a signed one (its build had a signing key)
   when you need to know who made it.
""")
    return f"""stella-build developer portal, offline edition ({ARCHIVE})
=============================================================================

Everything here works from a USB stick, with no network: the HTTP API reference, the Exportfile
reference, the bundle formats, client SDKs and the changelog.

1. Unpack (the archive has no top directory):
     mkdir devportal && tar -xzf {ARCHIVE} -C devportal && cd devportal

2. Check it before opening anything (POSIX sh, tar and sha256sum or shasum; no network):
     sh verify-offline.sh
   It checks every file against checksums.txt (first line: "root <sha256>" of the lines after it)
   and names any file that differs, is missing or is not listed.
{sign}
4. Open {portal_entry} in a browser (file://). Nothing in the portal loads from the network.

5. Install the Python SDK offline:
     pip install sdks/python/{sdk_wheel}
   Shell examples (curl) are in sdks/shell/. Machine-readable specs are in specs/.

manifest.json lists every file with its category, sha256, size and content type.
""".encode()
