"""Data set adapters (real logs) and the simulator with ground truth."""
