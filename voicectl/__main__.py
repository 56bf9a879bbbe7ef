"""``python -m voicectl``."""

from voicectl.cli import main

if __name__ == "__main__":
    main()
