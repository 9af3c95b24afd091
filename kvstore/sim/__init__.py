"""kvstore/sim."""
