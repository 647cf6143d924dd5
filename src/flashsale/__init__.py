"""flashsale: limited-stock orders that never oversell, and merchant settlement jobs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flashsale")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
