"""Streaming model merging: lazy safetensors I/O, a method-agnostic engine, methods by name."""
