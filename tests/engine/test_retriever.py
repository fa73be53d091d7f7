"""The retriever learns: a few hundred InfoNCE steps separate a small clustered set perfectly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector
from hyfunc.models.retriever import Retriever, RetrieverConfig, info_nce_loss


def recall_at_1(model: Retriever, queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        scores = model.encode_queries(queries) @ model.encode_keys(keys).T
    return float((scores.argmax(dim=1) == labels).float().mean())


def test_info_nce_training_separates_clusters() -> None:
    torch.manual_seed(0)
    dim, clusters, per_cluster = 32, 8, 16
    centers = torch.randn(clusters, dim)
    # Queries and function embeddings live in different spaces (as soft tokens and pooled tool
    # text do): keys are a fixed random map of the centres, queries noisy copies of the centres.
    key_map = torch.randn(dim, dim) / dim**0.5
    keys = centers @ key_map
    labels = torch.arange(clusters).repeat_interleave(per_cluster)
    queries = centers[labels] + 0.3 * torch.randn(len(labels), dim)
    held_out = centers[labels] + 0.3 * torch.randn(len(labels), dim)

    model = Retriever(RetrieverConfig(input_dim=dim, hidden_dim=64, output_dim=16, temperature=0.1))
    before = recall_at_1(model, held_out, keys, labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        batch = torch.randint(0, len(labels), (32,))
        loss = info_nce_loss(
            model.encode_queries(queries[batch]), model.encode_keys(keys), labels[batch], model.config.temperature
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before < 0.9
    assert recall_at_1(model, held_out, keys, labels) == 1.0


def test_info_nce_valid_mask_and_loss_values() -> None:
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    k = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]), dim=-1)
    positive = torch.tensor([0, 1])
    full = info_nce_loss(q, k, positive, 0.1)
    # Masking key 2 (a second gold for query 0) removes it as a negative: the loss drops.
    valid = torch.tensor([[True, True, False], [True, True, True]])
    masked = info_nce_loss(q, k, positive, 0.1, valid)
    assert masked < full


def test_towers_are_normalised_and_projector_shapes() -> None:
    model = Retriever(RetrieverConfig(input_dim=12, hidden_dim=8, output_dim=4))
    out = model.encode_queries(torch.randn(5, 12))
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-5)
    projector = SoftTokenProjector(ProjectorConfig(input_dim=12, output_dim=6, hidden_dim=8, num_tokens=3))
    assert projector(torch.randn(5, 12)).shape == (5, 3, 6)
