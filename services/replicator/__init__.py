"""The replicator: projects EVT and TASK streams into the analytical store (ClickHouse/chDB)."""
