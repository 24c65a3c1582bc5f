"""reasonclip-llava: reasoning supervision for CLIP-style encoders and their drop-in use in LLaVA-NeXT."""

__version__ = "0.1.0"
