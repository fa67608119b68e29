"""Page objects: one per surface the tests drive (partner page, connect modal, sandbox provider pages)."""
