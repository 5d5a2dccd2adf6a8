"""surrogate-kd: distill an image classifier into a smaller student without its training data."""

__version__ = "0.1.0"
