"""The `rotary-whisper` console script: runs the C++ program packaged beside
this module (rotary_attention/bin/rotary-whisper) with the same arguments."""

import os
import sys


def path() -> str:
    """Where the packaged rotary-whisper program lies."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "rotary-whisper")


def main() -> None:
    program = path()
    if not os.access(program, os.X_OK):
        sys.exit(f"rotary-whisper: {program} is missing: the package was installed without its C++ program")
    os.execv(program, [program, *sys.argv[1:]])


if __name__ == "__main__":
    main()
