"""The ML feature store on the key-value store (the module map is in ``docs/architecture.md``).

Definitions (``definitions.py``) are applied to a cluster's registry (``registry.py``); events are pushed into a
retained event log and merged into online rows (``ingest.py``, ``keys.py``); online reads enforce TTLs
(``serving.py``), from the cluster or from an in-process replica fed by the change feed (``client.py``,
``local_replica.py``); the batch layer materializes offline sources and recomputes (``batch.py``, ``offline.py``);
training data is a point-in-time join over the exported event log (``event_log.py``, ``training.py``,
``training_spark.py``); ``commands.py`` is ``kvstore features ...``.
"""
