"""Validating the measurement: the scoreboard, its statistics, replication across worlds (DESIGN.md §9)."""
