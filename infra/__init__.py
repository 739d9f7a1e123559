"""Local and production stacks for h3ops (not needed by unit tests)."""
