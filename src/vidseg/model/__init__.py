"""Model core: timm backbone, temporal neck, decoder, queries and the TarViS wrapper.

Kept import-light on purpose: import submodules directly (``from vidseg.model.neck import TemporalNeck``).
The model package never imports ``vidseg.tasks``.
"""
