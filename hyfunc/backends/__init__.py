"""Optional inference backends (imported lazily; the default backend is HF transformers)."""
