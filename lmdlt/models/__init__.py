"""Encoders (registry) and the encoder + linear-classifier network every method trains."""
from .encoders import available_encoders, build_encoder
from .network import Network, build_network

__all__ = ["available_encoders", "build_encoder", "Network", "build_network"]
