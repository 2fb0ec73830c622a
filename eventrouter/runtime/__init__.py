"""Executing decisions: the dispatcher, lanes, the fair limiter, steps, spawn, the journal.

The daemon that runs them, and wires them to Redis, is in ``service/``.
"""
