"""kvstore/features."""
