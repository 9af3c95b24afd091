"""chaos/checkers."""
