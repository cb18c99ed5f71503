import sys

from mailbot.cli import main

if __name__ == "__main__":  # not when a worker process (multiprocessing's spawn) imports it as __mp_main__
    sys.exit(main())
