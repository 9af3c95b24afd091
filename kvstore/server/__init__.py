"""The server driver: runs one Node in a process and serves it over HTTP.

main.py (process entry, signals) -> app.py (NodeServer: wiring) -> pump.py (the only caller of
Node.step; fsync and timers) + peer.py (node-to-node batches, HMAC) + router.py / routes_*.py
(client API) + http_codec.py (bodies, values, errors) + metrics.py + openapi.py. inprocess.py runs
real nodes inside a caller's event loop, for tests and benchmarks.
"""
