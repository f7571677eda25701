"""llmops: a Prefect-orchestrated LLMOps loop. The code lives in the mandated folders at the repository root
(``flows/``, ``tasks/``, ``models/``, ``monitoring/``, ``infra/``), installed as ``llmops.flows``, ``llmops.tasks``, ..."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llmops")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
