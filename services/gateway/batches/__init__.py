"""Batches: many articles in one request, paced per key, with a publishing calendar.

Left empty on purpose: ``publish.job`` imports ``batches.links`` and ``batches.record``, which
sit below the jobs; ``batches.dispatch`` and ``batches.routes`` sit above them.
"""
