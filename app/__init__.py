"""The service: settings, catalog, datasets, runs and REST handlers. No Panel imports."""
