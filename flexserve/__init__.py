"""FlexServe's command line: `flexserve` (see `flexserve --help`). The top floor: it may import
every other package; none of them imports it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flexserve")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
