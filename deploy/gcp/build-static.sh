#!/usr/bin/env bash
# Builds the static provision-cloudrun binary (x86_64-unknown-linux-musl, release profile) and
# copies it to dist/gcp/provision-cloudrun, the path the container image takes it from.
#
#   deploy/gcp/build-static.sh
#
# The one build command of the image: deploy/gcp/Dockerfile runs this script in its build stage
# (from the repository root, its WORKDIR), and scripts/check-image runs the very same script
# outside a container and checks what it produced. The cargo command is the only line after
# the `# build-command` marker below; keep it that way (scripts/check-image and scripts/lint-gcp
# read it from here).
#
# Needs: the Rust toolchain with the musl target (`rustup target add x86_64-unknown-linux-musl`)
# and a C compiler for musl, for the C code of aws-lc-sys (the crypto under rcgen and rustls):
# `musl-gcc` from musl-tools on Debian/Ubuntu (apt-get install musl-tools). No cmake: aws-lc-sys
# builds with the cc crate for this target.
#
# Honours CARGO_TARGET_DIR (default: target/ in the repository); the copy in dist/gcp is what
# keeps the image's COPY path independent of it (the Dockerfile keeps target/ in a cache mount,
# which the final stage cannot read).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo pipefail$/p' "$0" | sed '$d'; exit 0 ;;
  "") ;;
  *) echo "build-static: unknown option $1 (see --help)" >&2; exit 2 ;;
esac

target=x86_64-unknown-linux-musl
out=dist/gcp/provision-cloudrun

# The cc crate looks for musl-gcc for this target on its own; say it explicitly so a missing
# compiler fails with its name rather than with a glibc header error from plain gcc.
if [[ -z "${CC_x86_64_unknown_linux_musl:-}" ]]; then
  command -v musl-gcc >/dev/null || {
    echo "build-static: musl-gcc not found: install musl-tools (Debian/Ubuntu: apt-get install musl-tools) or set CC_x86_64_unknown_linux_musl" >&2
    exit 1
  }
  export CC_x86_64_unknown_linux_musl=musl-gcc
fi
rm -f "$out"

echo "build-static: cargo $(cargo --version | awk '{print $2}'), target dir ${CARGO_TARGET_DIR:-target}"
# build-command
cargo build --release --locked --target x86_64-unknown-linux-musl -p provision-cloudrun

target_dir="${CARGO_TARGET_DIR:-target}"
built="$target_dir/$target/release/provision-cloudrun"
[[ -f "$built" ]] || { echo "build-static: cargo finished but $built does not exist" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
install -m 0755 "$built" "$out"
echo "build-static: wrote $out ($(stat -c %s "$out") bytes)"
