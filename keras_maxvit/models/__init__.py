"""MaxViT models."""
