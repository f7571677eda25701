"""What the CLI starts on the user's machine: a local Prefect server, the deployment runner, ``llmops up``."""
