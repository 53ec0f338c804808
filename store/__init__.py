"""Persistence: SQLModel tables, engine and sessions, and the data home's atomic file layout.

Imports nothing of the platform's own packages.
"""
