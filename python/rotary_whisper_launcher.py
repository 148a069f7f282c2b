"""The `rotary-whisper` console script: runs the C++ program packaged in
rotary_attention/bin with the same arguments, and tells it where the installed
openai-whisper keeps its vocabularies (RA_WHISPER_ASSETS), for a checkpoint
given without --tokenizer, and where the installed silero-vad keeps its
TorchScript model (RA_SILERO_VAD), for --vad_filter without --vad_model. A
module of its own, outside the rotary_attention
package: importing that package imports torch, 4 of the 5 seconds the command
took to start."""

import importlib.util
import os
import sys


def program_path() -> str:
    """Where the packaged rotary-whisper program lies."""
    spec = importlib.util.find_spec("rotary_attention")  # (found, not imported)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("rotary-whisper: the rotary_attention package is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "bin", "rotary-whisper")


def main() -> None:
    program = program_path()
    if not os.access(program, os.X_OK):
        sys.exit(f"rotary-whisper: {program} is missing: the package was installed without its C++ program")
    spec = importlib.util.find_spec("whisper")
    if spec is not None and spec.origin and "RA_WHISPER_ASSETS" not in os.environ:
        os.environ["RA_WHISPER_ASSETS"] = os.path.join(os.path.dirname(spec.origin), "assets")
    spec = importlib.util.find_spec("silero_vad")
    if spec is not None and spec.origin and "RA_SILERO_VAD" not in os.environ:
        os.environ["RA_SILERO_VAD"] = os.path.join(os.path.dirname(spec.origin), "data", "silero_vad.jit")
    os.execv(program, ["rotary-whisper", *sys.argv[1:]])  # (usage lines name the command)


if __name__ == "__main__":
    main()
