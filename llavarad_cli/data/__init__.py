"""Data: report sectioning, MIMIC-CXR / Open-I / PhysioNet-annotation sources, records I/O, image copies."""
