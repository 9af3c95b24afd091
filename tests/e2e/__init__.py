"""End-to-end tests: the `kvstore` command against real node processes."""
