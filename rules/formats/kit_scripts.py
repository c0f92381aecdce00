"""The shell scripts an Offline Kit carries: `verify-kit.sh`, `import-kit.sh` and
`attestations/verify-attestations.sh` (docs/offline-kit.md).

They are the consumer side for sites that have nothing but a POSIX shell: they run under `dash`
(no bash features: no arrays, no `[[`, no `local` needed), use `tar` and `sha256sum` (or `shasum`)
plus POSIX utilities (`find`, `sort`, `cmp`, `cat`, `mktemp`), never the network, and call
`cosign` only when it is on the PATH. `stella-build kit verify|import` (stella_build/delivery/kit.py)
does the same checks and more (bounded decompression, per-member path checks, signature checks
without cosign); these scripts exist so that nobody needs stella-build to check a kit.

The texts are constants: the same bytes in every kit of this format version (they are listed in the
kit's checksums.txt like any other file, and `tests/test_offline_kit.py` runs them under dash).
"""
from __future__ import annotations

from stella_build.rules.formats.checksums import SH_HELPERS, SH_PICK_SHA

# Why `sha256sum -c` and not one process per file: a mirror has thousands of files; `-c` reads the
# "<sha256>  <path>" lines checksums.txt already holds (the format of GNU coreutils, busybox and
# perl's shasum alike) and checks them in one process.
VERIFY_KIT_SH = r"""#!/bin/sh
# verify-kit.sh: check a stella-build Offline Kit offline, with POSIX sh, tar and sha256sum (or shasum).
#
#   sh verify-kit.sh [-k cosign.pub] [-o DIR] [PATH]
#
# PATH (default: the directory holding this script) is one of:
#   - an unpacked kit, a directory with checksums.txt: every file must match checksums.txt (whose
#     first line, "root <sha256>", is the sha256 of the lines after it); no listed file may be
#     missing, no other file present, nothing may be a link or a special file. With cosign on the
#     PATH and a key, every signature listed in signatures.txt is checked too;
#   - a directory with stella-offline-kit-<date>.tar.gz (or its parts), the archive itself, or the
#     parts list <archive>.parts: each part is checked against the list (a missing, changed or
#     reordered part fails), the parts are joined, the archive must match <archive>.sha256 and,
#     with cosign and a key, its detached signature <archive>.sig / <archive>.sigstore.json. It is
#     then unpacked (into -o DIR, kept; else a temporary directory, removed) and checked as above.
#
# -k KEY  the public key to trust. Default: cosign.pub beside the archive, or trust/cosign.pub in the
#         kit; a key that comes with the kit proves the kit is intact, not who made it.
# -o DIR  unpack into DIR (must not exist yet) and keep it.
# Exit status: 0 verified, 1 a check failed, 2 usage.
set -eu
LC_ALL=C
export LC_ALL
prog=verify-kit

fail() { printf '%s: FAIL: %s\n' "$prog" "$*" >&2; exit 1; }
usage() { printf '%s: %s\nusage: sh verify-kit.sh [-k cosign.pub] [-o DIR] [PATH]\n' "$prog" "$*" >&2; exit 2; }
note() { printf '%s: %s\n' "$prog" "$*"; }

""" + SH_PICK_SHA + r"""COSIGN=$(command -v cosign 2>/dev/null || true)

key=
out=
while getopts k:o:h opt; do
	case $opt in
	k) key=$OPTARG ;;
	o) out=$OPTARG ;;
	h) usage "check an Offline Kit" ;;
	*) usage "unknown option" ;;
	esac
done
shift $((OPTIND - 1))
[ $# -le 1 ] || usage "give one PATH"
if [ $# -eq 1 ]; then
	target=$1
else
	case $0 in */*) target=${0%/*} ;; *) target=. ;; esac
fi
if [ -n "$key" ]; then
	[ -f "$key" ] || usage "key $key: no such file"
	case $key in /*) ;; *) key=$(pwd)/$key ;; esac
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/verify-kit.XXXXXX") || fail "cannot create a temporary directory"
trap 'rm -rf "$work"' EXIT
trap 'exit 1' HUP INT TERM

""" + SH_HELPERS + r"""
run_cosign() {  # cosign ARGS...; prints its output only when it fails
	"$COSIGN" "$@" </dev/null >"$work/cosign.log" 2>&1 || { cat "$work/cosign.log" >&2; return 1; }
}

verify_signatures() {  # $1 unpacked kit
	kit=$1
	[ -f "$kit/signatures.txt" ] || fail "signatures.txt is missing"
	count=0
	while IFS= read -r line; do count=$((count + 1)); done <"$kit/signatures.txt"
	if [ "$count" -eq 0 ]; then
		[ -z "$key" ] || fail "-k was given but the kit carries no signatures (an unsigned build)"
		note "the kit carries no signatures (an unsigned build): checksums only"
		return 0
	fi
	k=$key
	if [ -z "$k" ] && [ -f "$kit/trust/cosign.pub" ]; then
		k=$kit/trust/cosign.pub
		note "WARNING: no -k given: trusting trust/cosign.pub from the kit itself (proves integrity, not origin)"
	fi
	if [ -z "$COSIGN" ]; then
		[ -z "$key" ] || fail "-k was given but cosign is not on the PATH: $count signature(s) cannot be checked (install cosign, or use stella-build kit verify --key)"
		note "cosign is not on the PATH: $count signature(s) not checked (checksums only)"
		return 0
	fi
	[ -n "$k" ] || fail "the kit is signed but there is no key to check it with (-k cosign.pub)"
	while IFS=' ' read -r kind sig subject rest; do
		[ -z "$rest" ] || fail "signatures.txt: bad line '$kind $sig $subject $rest'"
		check_path "$sig" signatures.txt
		check_path "$subject" signatures.txt
		case $kind in
		bundle) run_cosign verify-blob --key "$k" --bundle "$kit/$sig" --insecure-ignore-tlog=true "$kit/$subject" ;;
		sig) run_cosign verify-blob --key "$k" --signature "$kit/$sig" --insecure-ignore-tlog=true "$kit/$subject" ;;
		attestation) run_cosign verify-blob-attestation --key "$k" --bundle "$kit/$sig" --type slsaprovenance1 \
			--insecure-ignore-tlog=true "$kit/$subject" ;;
		dsse) run_cosign verify-blob-attestation --key "$k" --signature "$kit/$sig" --type slsaprovenance1 \
			--insecure-ignore-tlog=true "$kit/$subject" ;;
		*) fail "signatures.txt: unknown kind '$kind'" ;;
		esac || fail "signature $sig does not verify $subject with $k"
	done <"$kit/signatures.txt"
	note "$count signature(s) verified with cosign"
}

verify_tree() {  # $1 an unpacked kit
	kit=$1
	list=$kit/checksums.txt
	[ -f "$list" ] && [ ! -h "$list" ] || fail "$kit: no checksums.txt"
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
	done <"$list"
	listed=$((n - 1))
	tail -n +2 "$list" | sed 's/^[0-9a-f]*  //' | sort -c -u 2>/dev/null \
		|| fail "checksums.txt: paths are not sorted or not unique"
	odd=$(cd "$kit" && find . ! -type f ! -type d -print | head -n 1)
	[ -z "$odd" ] || fail "$odd: links and special files are not allowed in a kit"
	(cd "$kit" && tail -n +2 checksums.txt | $SHA -c -) >"$work/check.log" 2>&1 || {
		grep -v ': OK$' "$work/check.log" >&2 || true
		fail "some files do not match checksums.txt"
	}
	files=$(($(cd "$kit" && find . -type f -print | wc -l)))  # $((...)): BSD wc pads with blanks
	[ "$files" -eq $((listed + 1)) ] || {
		(cd "$kit" && find . -type f -print | sed 's|^\./||' | sort) >"$work/found"
		{ echo checksums.txt; tail -n +2 "$list" | sed 's/^[0-9a-f]*  //'; } | sort >"$work/listed"
		comm -23 "$work/found" "$work/listed" | sed 's/^/  not in checksums.txt: /' >&2
		fail "the kit holds $files files, checksums.txt lists $listed (+ itself)"
	}
	note "$listed files match checksums.txt (root $root)"
	verify_signatures "$kit"
}

find_one() {  # $1 directory, $2 pattern: print the only match, nothing when none; fail on several
	found=
	for f in "$1"/$2; do
		[ -e "$f" ] || continue
		[ -z "$found" ] || usage "several kits match $1/$2: name one"
		found=$f
	done
	printf '%s' "$found"
}

verify_archive() {  # $1 archive (may not exist when parts are used), $2 parts list or empty
	archive=$1
	parts=$2
	dir=${archive%/*}
	name=${archive##*/}
	case $name in
	stella-offline-kit-*.tar.gz) ;;
	*) usage "$name is not a stella-offline-kit-<date>.tar.gz" ;;
	esac
	if [ -n "$parts" ]; then
		pdir=${parts%/*}
		n=0
		: >"$work/$name"
		while IFS= read -r line; do
			n=$((n + 1))
			hex=${line%%  *}
			part=${line#*  }
			[ "$hex  $part" = "$line" ] || fail "${parts##*/} line $n: not '<sha256>  <part>'"
			check_hex "$hex" "${parts##*/} line $n"
			case $part in
			"$name".part-[0-9][0-9][0-9]) ;;
			*) fail "${parts##*/} line $n: '$part' is not a part of $name" ;;
			esac
			[ "$part" = "$name.part-$(printf '%03d' $((n - 1)))" ] || fail "${parts##*/} line $n: parts are out of order"
			[ -f "$pdir/$part" ] || fail "part $part is missing"
			[ "$(sha_stdin <"$pdir/$part")" = "$hex" ] || fail "part $part does not match the parts list (changed, or parts reordered)"
			cat "$pdir/$part" >>"$work/$name"
		done <"$parts"
		[ "$n" -gt 0 ] || fail "${parts##*/} lists no parts"
		extra=$(($(find "$pdir" -name "$name.part-*" -print | wc -l)))
		[ "$extra" -eq "$n" ] || fail "$pdir holds $extra parts of $name, the list has $n"
		note "$n parts match ${parts##*/}; joined"
		archive=$work/$name
	fi
	[ -f "$archive" ] || fail "$archive: no such file"
	sidecar=
	for s in "$dir/$name.sha256" "${dir%/*}/$name.sha256"; do
		if [ -f "$s" ]; then sidecar=$s; break; fi
	done
	[ -n "$sidecar" ] || fail "$name.sha256 is missing"
	IFS= read -r want <"$sidecar" || fail "$sidecar is empty"
	[ "$want" = "${want%%  *}  $name" ] || fail "$sidecar: not '<sha256>  $name'"
	want=${want%%  *}
	check_hex "$want" "$sidecar"
	[ "$(sha_stdin <"$archive")" = "$want" ] || fail "$name does not match $name.sha256"
	note "$name matches $name.sha256"
	k=$key
	if [ -z "$k" ] && [ -f "$dir/cosign.pub" ]; then
		k=$dir/cosign.pub
	fi
	signed=0
	for s in "$dir/$name.sig" "$dir/$name.sigstore.json"; do
		[ -f "$s" ] && signed=1
	done
	if [ $signed -eq 0 ]; then
		[ -z "$key" ] || fail "-k was given but there is no detached signature beside $name (an unsigned kit)"
		note "no detached signature beside $name (an unsigned kit): checksums only"
	elif [ -z "$COSIGN" ]; then
		[ -z "$key" ] || fail "-k was given but cosign is not on the PATH: the detached signature of $name cannot be checked"
		note "cosign is not on the PATH: the detached signature of $name is not checked"
	elif [ -z "$k" ]; then
		fail "$name is signed but there is no key to check it with (-k cosign.pub)"
	else
		[ -n "$key" ] || note "WARNING: no -k given: trusting $k beside the archive (proves integrity, not origin)"
		if [ -f "$dir/$name.sig" ]; then
			run_cosign verify-blob --key "$k" --signature "$dir/$name.sig" --insecure-ignore-tlog=true "$archive" \
				|| fail "$name.sig does not verify $name with $k"
		fi
		if [ -f "$dir/$name.sigstore.json" ]; then
			run_cosign verify-blob --key "$k" --bundle "$dir/$name.sigstore.json" --insecure-ignore-tlog=true "$archive" \
				|| fail "$name.sigstore.json does not verify $name with $k"
		fi
		note "detached signature of $name verified with cosign"
		[ -n "$key" ] || key=$k
	fi
	top=${name%.tar.gz}
	tar -tzf "$archive" >"$work/names" || fail "$name is not a readable tar.gz"
	while IFS= read -r member; do
		case $member in
		"$top"/*) check_path "$member" "$name" ;;
		"$top"|"$top/") ;;
		*) fail "$name: member '$member' is outside $top/" ;;
		esac
	done <"$work/names"
	if [ -n "$out" ]; then
		[ ! -e "$out" ] || usage "$out already exists"
		mkdir -p "$out"
		dest=$out
	else
		dest=$work/unpacked
		mkdir "$dest"
	fi
	tar -xzf "$archive" -C "$dest" || fail "$name does not unpack"
	[ "$(ls -A "$dest")" = "$top" ] || fail "$name must hold exactly one directory, $top"
	verify_tree "$dest/$top"
	[ -z "$out" ] || note "unpacked into $out/$top"
}

if [ -d "$target" ] && [ -f "$target/checksums.txt" ]; then
	verify_tree "$target"
elif [ -d "$target" ]; then
	archive=$(find_one "$target" "stella-offline-kit-*.tar.gz")
	if [ -n "$archive" ]; then
		verify_archive "$archive" ""
	else
		parts=$(find_one "$target/parts" "stella-offline-kit-*.tar.gz.parts")
		[ -n "$parts" ] || parts=$(find_one "$target" "stella-offline-kit-*.tar.gz.parts")
		[ -n "$parts" ] || usage "$target: neither an unpacked kit nor a stella-offline-kit-*.tar.gz or its parts"
		base=${parts##*/}
		verify_archive "$target/${base%.parts}" "$parts"
	fi
elif [ -f "$target" ]; then
	case $target in
	*.tar.gz.parts)
		pdir=$(cd "$(dirname "$target")" && pwd)
		base=${target##*/}
		top=$pdir
		[ "${pdir##*/}" = parts ] && top=${pdir%/*}
		verify_archive "$top/${base%.parts}" "$pdir/$base" ;;
	*.tar.gz)
		tdir=$(cd "$(dirname "$target")" && pwd)
		verify_archive "$tdir/${target##*/}" "" ;;
	*) usage "$target: not a kit archive, parts list or directory" ;;
	esac
else
	usage "$target: no such file or directory"
fi
note "OK"
"""


IMPORT_KIT_SH = r"""#!/bin/sh
# import-kit.sh: install this kit's Trivy DBs into a Trivy cache directory, with POSIX sh and tar.
#
#   sh import-kit.sh [-k cosign.pub] [-f] [-d] CACHE_DIR
#
# Runs verify-kit.sh on this (unpacked) kit first. Then, for trivy/db/db.tar.gz and
# trivy/java-db/javadb.tar.gz, unpacks the archive next to CACHE_DIR/db (CACHE_DIR/java-db), checks
# that it holds exactly the DB file and metadata.json, and swaps the directory in with two renames,
# so Trivy sees the old DB or the new one, never half of each. Installing the same kit again changes
# nothing. A DB older than the installed one (metadata.json UpdatedAt) is refused unless -d.
# A non-empty CACHE_DIR that does not look like a Trivy cache is refused unless -f.
# Then: trivy --cache-dir CACHE_DIR fs --skip-db-update --skip-java-db-update --offline-scan \
#         --skip-version-check --disable-telemetry ...   (the last two: no call to check.trivy.dev)
# `stella-build kit import` does the same with stricter checks (docs/offline-kit.md).
# Exit status: 0 installed (or already installed), 1 a check failed, 2 usage.
set -eu
LC_ALL=C
export LC_ALL
prog=import-kit

fail() { printf '%s: FAIL: %s\n' "$prog" "$*" >&2; exit 1; }
usage() { printf '%s: %s\nusage: sh import-kit.sh [-k cosign.pub] [-f] [-d] CACHE_DIR\n' "$prog" "$*" >&2; exit 2; }
note() { printf '%s: %s\n' "$prog" "$*"; }

key=
force=0
downgrade=0
while getopts k:fdh opt; do
	case $opt in
	k) key=$OPTARG ;;
	f) force=1 ;;
	d) downgrade=1 ;;
	h) usage "install the kit's Trivy DBs" ;;
	*) usage "unknown option" ;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage "give the Trivy cache directory"
cache=$1
case $0 in */*) here=${0%/*} ;; *) here=. ;; esac
here=$(cd "$here" && pwd)

if [ -n "$key" ]; then
	sh "$here/verify-kit.sh" -k "$key" "$here" || fail "the kit does not verify; nothing installed"
else
	sh "$here/verify-kit.sh" "$here" || fail "the kit does not verify; nothing installed"
fi

if [ -d "$cache" ]; then
	for entry in "$cache"/* "$cache"/.[!.]*; do
		[ -e "$entry" ] || [ -h "$entry" ] || continue
		case ${entry##*/} in
		db|java-db|fanal|policy|checks|vex|.db.*|.java-db.*) ;;
		*) [ $force -eq 1 ] || fail "$cache holds ${entry##*/}: not a Trivy cache directory (-f to use it anyway)" ;;
		esac
	done
else
	mkdir -p "$cache"
fi

updated_at() {  # UpdatedAt of a Trivy metadata.json
	sed -n 's/.*"UpdatedAt":"\([^"]*\)".*/\1/p' "$1"
}

install_db() {  # $1 archive in the kit, $2 cache subdirectory, $3 DB file name
	[ -f "$here/$1" ] || return 0
	tmp=$cache/.$2.tmp.$$
	old=$cache/.$2.old.$$
	rm -rf "$tmp" "$old"
	mkdir "$tmp"
	tar -xzf "$here/$1" -C "$tmp" || { rm -rf "$tmp"; fail "$1 does not unpack"; }
	for f in "$tmp"/* "$tmp"/.[!.]*; do
		[ -e "$f" ] || [ -h "$f" ] || continue
		case ${f##*/} in
		"$3"|metadata.json) [ -f "$f" ] && [ ! -h "$f" ] || { rm -rf "$tmp"; fail "$1: ${f##*/} is not a regular file"; } ;;
		*) rm -rf "$tmp"; fail "$1 holds ${f##*/}, expected only $3 and metadata.json" ;;
		esac
	done
	[ -f "$tmp/$3" ] && [ -f "$tmp/metadata.json" ] || { rm -rf "$tmp"; fail "$1 lacks $3 or metadata.json"; }
	if [ -f "$cache/$2/$3" ] && [ -f "$cache/$2/metadata.json" ]; then
		if cmp -s "$tmp/$3" "$cache/$2/$3" && cmp -s "$tmp/metadata.json" "$cache/$2/metadata.json"; then
			rm -rf "$tmp"
			note "$2: already installed"
			return 0
		fi
		new=$(updated_at "$tmp/metadata.json")
		cur=$(updated_at "$cache/$2/metadata.json")
		if [ $downgrade -eq 0 ] && [ -n "$cur" ] && expr "x$new" \< "x$cur" >/dev/null; then
			rm -rf "$tmp"
			fail "$2: the kit's DB ($new) is older than the installed one ($cur); -d to install it anyway"
		fi
	fi
	chmod 755 "$tmp"
	chmod 644 "$tmp/$3" "$tmp/metadata.json"
	[ ! -e "$cache/$2" ] || mv "$cache/$2" "$old"
	mv "$tmp" "$cache/$2"
	rm -rf "$old"
	note "$2: installed $(updated_at "$cache/$2/metadata.json")"
}

install_db trivy/db/db.tar.gz db trivy.db
install_db trivy/java-db/javadb.tar.gz java-db trivy-java.db
note "OK: trivy --cache-dir $cache fs --skip-db-update --skip-java-db-update --offline-scan --skip-version-check --disable-telemetry ..."
"""


VERIFY_ATTESTATIONS_SH = r"""#!/bin/sh
# verify-attestations.sh: check the attestations/ folder of an Offline Kit (POSIX sh, sha256sum).
#
#   sh verify-attestations.sh [-k cosign.pub]
#
# Each export's attestation is in <export>/: statement.json (the in-toto statement, copied
# unchanged), and when the export was signed attestation.dsse.json (its DSSE envelope, copied
# unchanged, never re-signed), attestation.sigstore.json (the same envelope as a Sigstore bundle)
# and export.json (the statement's first subject, so cosign can check the claim). Every file must
# match checksums.txt here (first line "root <sha256>" over the other lines). With cosign on the
# PATH, each attestation is verified with -k, else ../trust/cosign.pub (integrity, not origin).
# Exit status: 0 verified, 1 a check failed, 2 usage.
set -eu
LC_ALL=C
export LC_ALL
prog=verify-attestations

fail() { printf '%s: FAIL: %s\n' "$prog" "$*" >&2; exit 1; }
note() { printf '%s: %s\n' "$prog" "$*"; }

key=
while getopts k: opt; do
	case $opt in
	k) key=$OPTARG ;;
	*) printf 'usage: sh verify-attestations.sh [-k cosign.pub]\n' >&2; exit 2 ;;
	esac
done
case $0 in */*) here=${0%/*} ;; *) here=. ;; esac
cd "$here"
if command -v sha256sum >/dev/null 2>&1; then SHA=sha256sum; elif command -v shasum >/dev/null 2>&1; then SHA="shasum -a 256"; else fail "no sha256sum or shasum"; fi

IFS= read -r first <checksums.txt || fail "checksums.txt is empty"
case $first in "root "*) ;; *) fail "checksums.txt: the first line is not 'root <sha256>'" ;; esac
set -- $(tail -n +2 checksums.txt | $SHA)
[ "root $1" = "$first" ] || fail "checksums.txt: root does not match the lines after it"
tail -n +2 checksums.txt | $SHA -c - >/dev/null 2>&1 || fail "some files do not match checksums.txt"
odd=$(find . ! -type f ! -type d -print | head -n 1)
[ -z "$odd" ] || fail "$odd: links and special files are not allowed"
listed=$(($(wc -l <checksums.txt) - 1))
files=$(($(find . -type f -print | wc -l)))
[ "$files" -eq $((listed + 1)) ] || fail "$files files here, checksums.txt lists $listed (+ itself)"
note "$listed files match checksums.txt"

COSIGN=$(command -v cosign 2>/dev/null || true)
[ -n "$key" ] || { [ ! -f ../trust/cosign.pub ] || key=../trust/cosign.pub; }
n=0
for bundle in */attestation.sigstore.json; do
	[ -f "$bundle" ] || continue
	n=$((n + 1))
	[ -n "$COSIGN" ] || continue
	[ -n "$key" ] || fail "no key to check the attestations with (-k cosign.pub)"
	d=${bundle%/*}
	"$COSIGN" verify-blob-attestation --key "$key" --bundle "$bundle" --type slsaprovenance1 \
		--insecure-ignore-tlog=true "$d/export.json" </dev/null >/dev/null 2>&1 \
		|| fail "$bundle does not verify with $key"
done
if [ $n -eq 0 ]; then
	note "no signed attestation here (an unsigned build)"
elif [ -z "$COSIGN" ]; then
	note "cosign is not on the PATH: $n attestation signature(s) not checked"
else
	note "$n attestation(s) verified with cosign"
fi
note "OK"
"""
