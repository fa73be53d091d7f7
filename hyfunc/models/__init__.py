"""Model loading and the on-disk layout of a models directory."""
