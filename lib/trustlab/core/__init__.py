"""Shared mechanics every stage uses: configuration, paths, atomic io, seeding, progress, statistics, provenance. Imports nothing else of trustlab."""
