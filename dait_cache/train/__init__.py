"""Training: the shared engine, DAIT stage 1 (teacher) and stage 2 (student)."""
