"""Data layer: official formats -> VideoRecord -> clips. Never imports the model."""
