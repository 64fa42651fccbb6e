"""Readers and writers: MRC, STAR, CSV tables, the HDF5 pool, atomic file writes."""
