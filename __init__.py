"""llmops: a Prefect-orchestrated LLMOps loop. The repository root is the package: its mandated folders
(``flows/``, ``tasks/``, ``models/``, ``monitoring/``, ``infra/``) install as ``llmops.flows``, ``llmops.tasks``, ..."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llmops")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
