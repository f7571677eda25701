"""Training: the run as a stage (id, preflight, resume, publish), the loop and its steps, batches, checkpoints,
the fused head and loss, and scale-out with torch.distributed (``launcher`` starts torchrun, whose ranks run
``worker``)."""
from llmops.models.training.checkpoint import TrainingError
from llmops.models.training.launcher import launch_run
from llmops.models.training.loop import StepMetrics
from llmops.models.training.preflight import PreflightError
from llmops.models.training.run import run_training
from llmops.models.training.run_id import run_id_for, run_identity

__all__ = [
    "PreflightError", "StepMetrics", "launch_run", "TrainingError", "run_id_for", "run_identity", "run_training",
]
