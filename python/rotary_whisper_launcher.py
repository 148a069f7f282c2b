"""The `rotary-whisper` console script: runs the C++ program packaged beside
this module (rotary_attention/bin/rotary-whisper) with the same arguments, and
tells it where the installed openai-whisper keeps its vocabularies
(RA_WHISPER_ASSETS), for a checkpoint given without --tokenizer."""

import importlib.util
import os
import sys


def path() -> str:
    """Where the packaged rotary-whisper program lies."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "rotary-whisper")


def main() -> None:
    program = path()
    if not os.access(program, os.X_OK):
        sys.exit(f"rotary-whisper: {program} is missing: the package was installed without its C++ program")
    spec = importlib.util.find_spec("whisper")  # (found, not imported)
    if spec is not None and spec.origin and "RA_WHISPER_ASSETS" not in os.environ:
        os.environ["RA_WHISPER_ASSETS"] = os.path.join(os.path.dirname(spec.origin), "assets")
    os.execv(program, [program, *sys.argv[1:]])


if __name__ == "__main__":
    main()
