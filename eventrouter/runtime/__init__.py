"""Executing decisions: lanes, the fair limiter, steps, spawn, the dispatcher, the daemon."""
