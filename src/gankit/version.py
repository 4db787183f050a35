"""gankit's version, as installed (package metadata), for checkpoints, reports and ``--version``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gankit")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
