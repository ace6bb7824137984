#!/usr/bin/env bash
# Fetches a real third-party C project for the build-farm tests and benchmarks, unmodified and
# pinned, into ./.tools/c-project/<name>-<version>/ (ignored), and prints that folder as the
# last line of stdout. Idempotent: a second run only prints the path.
#
#   scripts/fetch-c-project.sh [lua|json-c|pkgconf|leveldb|zeromq]     # lua is the default
#
# Lua 5.4.4 (MIT): 34 translation units (32 in liblua.a, lua.c, luac.c), its own Makefile;
# `make -C <dir>/src linux` builds src/liblua.a, src/lua and src/luac.
# json-c 0.16 (MIT): CMake (built with Ninja in the tests), about 25 units in libjson-c and
# its apps; Debian's source package json-c carries the upstream tarball as
# json-c_0.16.orig.tar.gz.
# pkgconf 1.8.1 (ISC): autotools (the release tarball's own configure), about 20 units in
# libpkgconf and the pkgconf program; Debian's source package pkgconf carries the release.
# LevelDB 1.23 (BSD-3-Clause): C++11, CMake (built with Ninja), about 35 units in libleveldb
# with its tests and benchmarks off (their third-party trees are not in the tarball).
# ZeroMQ (libzmq) 4.3.4 (LGPL-3.0 with a static-linking exception): C++, CMake (built with
# Ninja), 104 C++ units and 2 C units (tweetnacl among them) in libzmq with its tests, perf
# tools and docs off; Debian's source package
# zeromq3 carries the release tarball.
# Where it comes from: Debian's source package lua5.4, whose .orig.tar.gz is byte for byte the
# upstream release tarball lua-5.4.4.tar.gz (same sha256 as the one upstream publishes); Debian's
# own patches (the .debian.tar.xz) are not applied. Two ways, both apt's own clients, both
# checking the pinned sha256:
#   1. `apt-get source --download-only --tar-only lua5.4=<pinned Debian version>` with deb-src
#      entries derived from this machine's Debian apt sources, in a private apt state under
#      .tools/apt-src (the system's apt configuration is not touched). apt checks the file
#      against the signed source index too.
#   2. If that index has no such version (another Debian release, say), the same file by its pool
#      path on the same mirror with `apt-helper download-file`.
# Prints nothing but errors and the path unless VERBOSE=1.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/.tools"

name=${1:-lua}
case "$name" in
  lua)
    VERSION=5.4.4                        # pinned: upstream release
    DEBIAN_SOURCE=lua5.4                 # Debian source package that carries it
    DEBIAN_VERSION=5.4.4-3+deb12u1       # pinned: Debian version tried first (bookworm)
    DEBIAN_PREFIX=5.4.4-                 # other Debian revisions with the same .orig tarball
    TARBALL=lua5.4_5.4.4.orig.tar.gz
    SHA256=164c7849653b80ae67bec4b7473b884bf5cc8d2dca05653475ec2ed27b9ebf61  # = upstream lua-5.4.4.tar.gz
    POOL_PATH=pool/main/l/lua5.4         # where the tarball lies on a Debian mirror
    TOPDIR=lua-5.4.4                     # the folder the tarball unpacks into
    CHECK_FILE=src/Makefile ;;
  json-c)
    VERSION=0.16
    DEBIAN_SOURCE=json-c
    DEBIAN_VERSION=0.16-2
    DEBIAN_PREFIX=0.16-
    TARBALL=json-c_0.16.orig.tar.gz
    SHA256=3ecaeedffd99a60b1262819f9e60d7d983844073abc74e495cb822b251904185
    POOL_PATH=pool/main/j/json-c
    TOPDIR=json-c-json-c-0.16-20220414
    CHECK_FILE=CMakeLists.txt ;;
  pkgconf)
    VERSION=1.8.1
    DEBIAN_SOURCE=pkgconf
    DEBIAN_VERSION=1.8.1-1
    DEBIAN_PREFIX=1.8.1-
    TARBALL=pkgconf_1.8.1.orig.tar.xz
    SHA256=644361ada2942be05655d4452eb018791647c31bba429b287f1f68deb2dc6840
    POOL_PATH=pool/main/p/pkgconf
    TOPDIR=pkgconf-1.8.1
    CHECK_FILE=configure ;;
  leveldb)
    VERSION=1.23
    DEBIAN_SOURCE=leveldb
    DEBIAN_VERSION=1.23-4
    DEBIAN_PREFIX=1.23-
    TARBALL=leveldb_1.23.orig.tar.gz
    SHA256=9a37f8a6174f09bd622bc723b55881dc541cd50747cbd08831c2a82d620f6d76
    POOL_PATH=pool/main/l/leveldb
    TOPDIR=leveldb-1.23
    CHECK_FILE=CMakeLists.txt ;;
  zeromq)
    VERSION=4.3.4
    DEBIAN_SOURCE=zeromq3
    DEBIAN_VERSION=4.3.4-6
    DEBIAN_PREFIX=4.3.4-
    TARBALL=zeromq3_4.3.4.orig.tar.gz
    SHA256=0ff5a531c9ffaf0dfdc7dc78d13d1383088f454896d252934c429b2554d10559
    POOL_PATH=pool/main/z/zeromq3
    TOPDIR=libzmq-4.3.4
    CHECK_FILE=CMakeLists.txt ;;
  *) echo "fetch-c-project: unknown project '$name' (known: lua, json-c, pkgconf, leveldb, zeromq)" >&2; exit 2 ;;
esac

log() { [ "${VERBOSE:-0}" = 1 ] && echo "fetch-c-project: $*" >&2 || true; }
die() { echo "fetch-c-project: $*" >&2; exit 1; }

dest="$tools/c-project/$name-$VERSION"
stamp="$dest/.vgas-fetched"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$SHA256" ] && [ -f "$dest/$CHECK_FILE" ]; then
  log "already there: $dest"
  echo "$dest"
  exit 0
fi

downloads="$tools/c-project/downloads"
tarball="$downloads/$TARBALL"
mkdir -p "$downloads"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

command -v apt-get >/dev/null 2>&1 || die "needs apt-get (a Debian machine): the Lua sources come from Debian's source packages"

# deb-src entries for the Debian sources this machine already uses (same mirrors, same keys).
apt_src="$tools/apt-src"
debian_src_entries() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: keep the stanzas of Debian's own archive (signed by its keyring, or a /debian URI).
    awk 'BEGIN { RS = ""; ORS = "\n\n" }
         /(^|\n)Types:[^\n]*deb/ && /(^|\n)URIs:[^\n]*debian/ && !/(^|\n)Enabled: *no/ {
           sub(/(^|\n)Types:[^\n]*/, "\nTypes: deb-src"); sub(/^\n/, ""); print }' "$f"
  done
}
debian_list_entries() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -n 's/^[[:space:]]*deb[[:space:]]\(.*debian.*\)$/deb-src \1/p' "$f"
  done
}
mirror_uris() { # the base URIs of those entries, archive first
  { debian_src_entries | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n'
    debian_list_entries | awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; break } }'
  } | grep -v -- '-security' | grep -v '^$' | awk '!seen[$0]++'
}

apt_opts=()
fetch_with_apt_source() {
  mkdir -p "$apt_src/parts" "$apt_src/lists/partial" "$apt_src/cache/archives/partial" "$apt_src/dl"
  debian_src_entries > "$apt_src/parts/debian-src.sources"
  debian_list_entries > "$apt_src/parts/debian-src.list"
  [ -s "$apt_src/parts/debian-src.sources" ] || rm -f "$apt_src/parts/debian-src.sources"
  [ -s "$apt_src/parts/debian-src.list" ] || rm -f "$apt_src/parts/debian-src.list"
  if [ -z "$(ls -A "$apt_src/parts")" ]; then
    log "no Debian apt sources on this machine to derive deb-src entries from"
    return 1
  fi
  apt_opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_src/parts"
            -o "Dir::State::Lists=$apt_src/lists" -o "Dir::Cache=$apt_src/cache"
            -o "APT::Sandbox::User=root" -o "Acquire::http::Timeout=30" -o "Acquire::https::Timeout=30"
            -o "Acquire::Retries=2" -o "APT::Update::Error-Mode=any" -o "Debug::NoLocking=1")
  log "reading Debian's source index (apt-get update into $apt_src)"
  if ! apt-get "${apt_opts[@]}" -qq update >"$apt_src/update.log" 2>&1; then
    echo "fetch-c-project: apt-get update of Debian's source index failed:" >&2
    sed 's/^/  /' "$apt_src/update.log" >&2
    return 1
  fi
  local version="$DEBIAN_VERSION" available
  available=$(apt-cache "${apt_opts[@]}" showsrc "$DEBIAN_SOURCE" 2>/dev/null \
                | sed -n "s/^Version: //p" | sort -u | xargs)
  case " $available " in
    *" $version "*) ;;
    *) # another Debian revision of the same upstream release carries the same .orig.tar.gz
       version=$(tr ' ' '\n' <<<"$available" | grep "^$DEBIAN_PREFIX" | head -n1 || true)
       [ -n "$version" ] || { log "Debian's index has $DEBIAN_SOURCE ${available:-(none)}, not $VERSION"; return 1; } ;;
  esac
  log "apt-get source --download-only --tar-only $DEBIAN_SOURCE=$version"
  rm -f "$apt_src/dl/$TARBALL"
  if ! (cd "$apt_src/dl" && apt-get "${apt_opts[@]}" -qq source --download-only --tar-only \
          "$DEBIAN_SOURCE=$version") >"$apt_src/source.log" 2>&1; then
    echo "fetch-c-project: apt-get source $DEBIAN_SOURCE=$version failed:" >&2
    sed 's/^/  /' "$apt_src/source.log" >&2
    return 1
  fi
  sha_ok "$apt_src/dl/$TARBALL" || die "$TARBALL from apt-get source does not have the pinned sha256 $SHA256"
  mv "$apt_src/dl/$TARBALL" "$tarball"
}

fetch_from_pool() {
  local helper=/usr/lib/apt/apt-helper uri
  [ -x "$helper" ] || return 1
  for uri in $(mirror_uris); do
    log "apt-helper download-file ${uri%/}/$POOL_PATH/$TARBALL"
    if "$helper" -o "APT::Sandbox::User=root" -o "Acquire::http::Timeout=30" -o "Acquire::https::Timeout=30" -o "Acquire::Retries=2" \
         download-file "${uri%/}/$POOL_PATH/$TARBALL" "$tarball.part" "SHA256:$SHA256" \
         >"$downloads/pool.log" 2>&1; then
      mv "$tarball.part" "$tarball"
      return 0
    fi
    echo "fetch-c-project: download from the pool failed:" >&2
    sed 's/^/  /' "$downloads/pool.log" >&2
    rm -f "$tarball.part"
  done
  return 1
}

if sha_ok "$tarball"; then
  log "have $tarball"
else
  rm -f "$tarball"
  fetch_with_apt_source || fetch_from_pool || die "could not download $TARBALL ($name $VERSION) from Debian's package archive: is the registry reachable? (see the messages above)"
  sha_ok "$tarball" || die "$tarball does not have the pinned sha256 $SHA256"
fi

# Unpack into a scratch folder first, so that an interrupted run leaves no half tree behind.
tmp=$(mktemp -d "$tools/c-project/.unpack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tar --no-same-owner -xaf "$tarball" -C "$tmp"
[ -f "$tmp/$TOPDIR/$CHECK_FILE" ] || die "$TARBALL has no $TOPDIR/$CHECK_FILE"
rm -rf "$dest"
mv "$tmp/$TOPDIR" "$dest"
echo "$SHA256" > "$stamp"
log "unpacked into $dest ($(find "$dest" -name '*.c' -o -name '*.cc' -o -name '*.cpp' | wc -l) C and C++ files)"
echo "$dest"
