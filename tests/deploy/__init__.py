"""Checks of deploy/: the image, compose file, Kubernetes manifests and monitoring config."""
