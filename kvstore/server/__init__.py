"""kvstore/server."""
