"""Child process for lock tests: holds a directory's run lock, then exits.

usage: python lock_holder.py DIRECTORY SECONDS|until=FILE [MARKER]
Prints "locked" once it holds the lock; sleeps SECONDS, or until FILE exists; writes MARKER
(if given) just before it lets go, so a waiting process can check that it entered only afterwards.
"""

import sys
import time
from pathlib import Path

from wealy_cli.core.lock import run_lock


def main() -> None:
    directory, hold = Path(sys.argv[1]), sys.argv[2]
    marker = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    with run_lock(directory, "test directory", owner=True):
        print("locked", flush=True)
        if hold.startswith("until="):
            while not Path(hold.removeprefix("until=")).exists():
                time.sleep(0.02)
        else:
            time.sleep(float(hold))
        if marker is not None:
            marker.write_text("released\n")


if __name__ == "__main__":
    main()
