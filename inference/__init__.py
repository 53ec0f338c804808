"""Models, input checks, the annotation pipeline, weights and the Dask side.

Takes paths and parameters and writes result files; imports neither ``app`` nor ``store``.
"""
