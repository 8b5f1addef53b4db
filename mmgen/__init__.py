"""mmgen: VideoAR video generation and Blink perception in PyTorch."""

__version__ = "0.1.0"
