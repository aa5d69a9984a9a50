"""The ``hntumorseg`` command line: the parser and its commands, one case's run, batches over folders.

Top layer: may import every other subpackage; nothing in the library imports it.
"""

from HNTumorSegLib.cli.commands import main

__all__ = ["main"]
