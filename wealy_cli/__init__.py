"""wealy: audio-based lyrics matching with Whisper embeddings."""
__version__ = "0.1.0"
