"""Training: embeddings, retriever (InfoNCE), projector + LMS (selective SFT), demo recipe."""
