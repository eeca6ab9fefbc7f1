"""Encoders (lmdlt's, torchvision's, timm's), pretrained weights, fine-tuning, and the encoder +
linear-classifier network every method trains."""
from .encoders import available_encoders, build_encoder, check_arch, register_feature_map_hook
from .network import Network, build_network

__all__ = ["available_encoders", "build_encoder", "check_arch", "register_feature_map_hook",
           "Network", "build_network"]
