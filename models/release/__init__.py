"""Release: the registry (versions, aliases), model cards, and registering, smoke-testing and promoting a version."""
