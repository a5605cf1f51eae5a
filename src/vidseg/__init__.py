"""vidseg: one TarViS/GvSeg-style model for many video-segmentation tasks."""

__version__ = "0.1.0"
