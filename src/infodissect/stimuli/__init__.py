"""The stimulus stage: seeded factor designs rendered into Zarr stores."""
