"""Data: the records training reads and evaluation scores, and nothing that runs a model.

- loaders.py: `Example`, xlam-format JSON/JSONL (what the service's export writes), BFCL question
  and answer files (BFCL's schema dialect converted to JSON Schema here only; evaluation only);
- demo_task.py: the demo task's 49 tools, value pools and phrasings (hyfunc/demo/), split by
  template and value into train and held-out;
- seal_tools.py: Seal-Tools (Apache-2.0) as xlam records, BFCL names and questions excluded;
- augment.py: value-randomised copies of training examples.

The layer above the types and config and below the models (docs/architecture.md).
"""
