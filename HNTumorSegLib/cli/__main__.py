"""``python -m HNTumorSegLib.cli``: the same as the ``hntumorseg`` command."""

import sys

from HNTumorSegLib.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
