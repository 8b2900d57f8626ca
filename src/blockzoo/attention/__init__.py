"""Attention blocks: sequence/token attention and image (channel/spatial) attention."""
