"""HyFunc: intent-to-function-call cascade (LML soft token -> retriever -> templated LMS)."""

__version__ = "0.1.0"
