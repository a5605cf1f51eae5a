"""Inference: clip streaming, stitching, resizing predictions back to the original frames."""
