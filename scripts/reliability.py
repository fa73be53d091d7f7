"""The reliability suite (see hyfunc/chaos/reliability.py): `python scripts/reliability.py`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyfunc.chaos.reliability import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
