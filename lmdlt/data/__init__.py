"""Datasets: sources, long-tail construction, split manifests, image cache, samplers, transforms."""
