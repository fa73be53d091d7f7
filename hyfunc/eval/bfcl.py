"""`hyfunc eval bfcl`: the configured cascade on BFCL v4, scored by BFCL's own AST checker.

Data: the single-turn categories shipped in the `bfcl-eval` package, read by our loader
(hyfunc.data.loaders), which converts BFCL's schema dialect to JSON Schema for the cascade.
Scoring: `bfcl_eval.eval_checker.ast_eval.ast_checker.ast_checker` on the *raw* BFCL function
docs and possible answers (so the checker sees exactly what it sees in BFCL), with our calls
as BFCL's decoded model output `[{name: {arg: value}}]`. Irrelevance categories are correct
when the cascade returns no call; live_relevance when it returns at least one.

By default every non-live single-turn category bfcl_eval ships runs in full (its
NON_LIVE_CATEGORY: simple_python, simple_java, simple_javascript, multiple, parallel,
parallel_multiple, irrelevance); `categories` also takes BFCL's group names (`non_live`,
`live`, `single_turn`, ...). Every question counts: one the loader cannot turn into a request
is scored wrong with its reason in the raw output, never dropped.

Accuracy is printed per category and overall as BFCL summarises it (unweighted mean of the
category accuracies), next to the count-weighted mean. Retriever-only metrics: recall@1 and
recall@3 of the gold functions among each example's own candidates (examples with more than
one tool), against a BM25 baseline (rank_bm25's BM25+, term statistics over the category's
tools) ranking the same candidates by their text.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from hyfunc.eval.batches import run_examples
from hyfunc.eval.errors import error_table
from hyfunc.jsonl import jsonl_records
from hyfunc.schema import CallResult

_ALIASES = {"simple": "simple_python", "java": "simple_java", "javascript": "simple_javascript"}


def resolve_categories(names: list[str] | tuple[str, ...] | None) -> list[tuple[str, str]]:
    """Category names (short names, file stems or BFCL group names) -> (label, file stem) pairs
    in order, without duplicate stems; a name given alone keeps its spelling as the label, a
    group expands to stems. None = every non-live category. Unknown names raise ValueError
    listing what is available."""
    from hyfunc.data.loaders import bfcl_categories, bfcl_non_live_categories

    if not names:
        return [(c, c) for c in bfcl_non_live_categories()]
    available = bfcl_categories()
    try:
        from bfcl_eval.constants.category_mapping import TEST_COLLECTION_MAPPING
    except ImportError:
        TEST_COLLECTION_MAPPING = {}
    out: list[tuple[str, str]] = []
    for name in names:
        if name in TEST_COLLECTION_MAPPING:
            pairs = [(c, c) for c in TEST_COLLECTION_MAPPING[name] if c in available]
        else:
            stem = _ALIASES.get(name, name)
            if stem not in available:
                raise ValueError(
                    f"unknown or unsupported BFCL category {name!r}; available: {', '.join(available)} "
                    f"(or a group: {', '.join(TEST_COLLECTION_MAPPING) or 'none'})"
                )
            pairs = [(name, stem)]
        seen = {stem for _, stem in out}
        out.extend(pair for pair in pairs if pair[1] not in seen)
    return out


class BfclUnavailable(RuntimeError):
    """bfcl-eval is not installed (extra `bfcl`)."""


def _checker():
    try:
        from bfcl_eval.constants.enums import Language
        from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    except ImportError as err:
        raise BfclUnavailable(f"BFCL scoring needs the official checker: pip install 'hyfunc[bfcl]' ({err})") from None
    # The checker looks the model up only to decide whether "." in names was rewritten to "_";
    # our names are written verbatim, so any model that keeps dots will do.
    model_name = next(k for k, v in MODEL_CONFIG_MAPPING.items() if not v.underscore_to_dot and "_" not in k)
    return ast_checker, Language, model_name


def _raw_records(stem: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from hyfunc.data.loaders import bfcl_data_dir

    data = bfcl_data_dir()

    def read(path: Path) -> dict[str, Any]:
        out = {}
        if path.is_file():
            for number, rec in jsonl_records(path):
                if isinstance(rec, json.JSONDecodeError):
                    raise ValueError(f"{path}:{number}: not valid JSON: {rec}")
                out[str(rec["id"])] = rec
        return out

    return read(data / f"BFCL_v4_{stem}.json"), read(data / "possible_answer" / f"BFCL_v4_{stem}.json")


def bfcl_output(result: CallResult) -> list[dict[str, Any]]:
    """Our calls as BFCL's decoded AST output: [{func_name: {arg: value}}]."""
    return [{call.name: dict(call.arguments)} for call in result.calls]


def _language(stem: str, Language):
    if stem.endswith("java"):
        return Language.JAVA
    if stem.endswith("javascript"):
        return Language.JAVASCRIPT
    return Language.PYTHON


_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    # split snake_case and dotted names too: get_weather -> get, weather
    return _WORD.findall(text.lower().replace("_", " ").replace(".", " "))


class BM25Ranker:
    """BM25+ over a tool library (term statistics from every tool of a category), ranking
    one example's candidates. BM25+ keeps IDF positive in small libraries, where Okapi's
    IDF of a term found in half the documents is 0."""

    def __init__(self, library: list):
        from rank_bm25 import BM25Plus

        from hyfunc.cascade.prompts import tool_text

        self.row: dict[str, int] = {}
        corpus = []
        for tool in library:
            key = tool.content_hash()
            if key not in self.row:
                self.row[key] = len(corpus)
                corpus.append(_words(tool_text(tool)) or ["_"])
        self.bm25 = BM25Plus(corpus)

    def rank(self, query: str, tools: list) -> list[int]:
        scores = self.bm25.get_batch_scores(_words(query), [self.row[t.content_hash()] for t in tools])
        return sorted(range(len(tools)), key=lambda i: (-scores[i], i))


def bm25_rank(query: str, tools: list, library: list | None = None) -> list[int]:
    """Candidate indices of `tools` best first; term statistics from `library` (default: tools)."""
    return BM25Ranker(library or tools).rank(query, tools)


def _recall(ranked_names: list[str], gold: set[str], k: int) -> float:
    return len(set(ranked_names[:k]) & gold) / len(gold)


def retriever_ranks(cascade, examples) -> list[list[str]]:
    """The cascade's retriever ranking of every candidate of each example (no top-k cut)."""
    import torch

    with torch.inference_mode():
        intent = cascade.intent.soft_tokens([ex.query for ex in examples])
        hits = cascade.retrieve(intent.soft_tokens, [ex.tools for ex in examples], max(len(ex.tools) for ex in examples))
    return [[h.tool.name for h in row] for row in hits]


def evaluate_bfcl(
    cascade,
    categories: list[str] | tuple[str, ...] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    out_dir: Path | None = None,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:

    from hyfunc.data.loaders import load_bfcl_category

    ast_checker, Language, model_name = _checker()
    results: dict[str, Any] = {"categories": {}, "model_versions": cascade.model_versions}
    raw_out = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    for category, stem in resolve_categories(categories):
        # Gold that does not fit its own schema (a few BFCL records) still runs: the official
        # checker judges the output against the raw answers.
        examples, load_report = load_bfcl_category(stem, progress=False, check_answers=False)
        questions, answers = _raw_records(stem)
        order = list(questions)
        skipped = {str(rec_id): reason for rec_id, reason in _skipped_ids(load_report, order)}
        if limit:
            keep = set(order[:limit])
            examples = [ex for ex in examples if str(ex.id) in keep]
            skipped = {k: v for k, v in skipped.items() if k in keep}
        language = _language(stem, Language)
        correct = errors = no_call = 0
        rows: list[dict[str, Any]] = [
            {"id": rec_id, "valid": False, "result": [], "error": f"not loadable: {reason}"} for rec_id, reason in skipped.items()
        ]
        start = time.perf_counter()
        for ex, res in run_examples(cascade, examples, batch_size, f"bfcl {category}", progress):
            output = bfcl_output(res)
            error_type: str | None = None
            gold_calls: int | None = None
            if "irrelevance" in stem:
                ok, detail = not output, None if not output else "irrelevance_error: a call was made"
            elif "relevance" in stem:
                ok, detail = bool(output), None if output else "relevance_error: no call"
            else:
                q = questions.get(str(ex.id))
                a = answers.get(str(ex.id))
                if a is not None:
                    gold_calls = len(a["ground_truth"])
                if q is None or a is None:
                    ok, detail = False, "record missing from the raw BFCL files"
                elif not output:
                    ok, detail = False, res.error or res.no_call_reason or "no call"
                else:
                    check = ast_checker(q["function"], output, a["ground_truth"], language, stem, model_name)
                    ok, detail = bool(check["valid"]), None if check["valid"] else check.get("error")
                    error_type = check.get("error_type")
            correct += ok
            errors += res.error is not None
            no_call += not output
            rows.append({
                "id": ex.id, "valid": ok, "result": output, "error": res.error, "error_type": error_type,
                "gold_calls": gold_calls,
                "no_call_reason": res.no_call_reason, "candidates": [c.model_dump() for c in res.candidates],
                "detail": detail, "tokens": res.tokens.model_dump(), "timings_ms": res.timings_ms.model_dump(),
            })
        seconds = time.perf_counter() - start
        total = len(examples) + len(skipped)
        entry: dict[str, Any] = {
            "n": total,
            "not_loadable": len(skipped),
            "correct": correct,
            "accuracy": round(correct / total, 4) if total else None,
            "errors": errors,
            "no_call": no_call,
            "seconds": round(seconds, 1),
        }
        multi = [ex for ex in examples if len(ex.tools) > 1 and ex.answers]
        if multi:
            ranks = retriever_ranks(cascade, multi)
            ranker = BM25Ranker([t for ex in examples for t in ex.tools])
            bm25 = [[ex.tools[i].name for i in ranker.rank(ex.query, ex.tools)] for ex in multi]
            golds = [{c.name for c in ex.answers} for ex in multi]
            entry["retrieval"] = {
                "examples": len(multi),
                "retriever_recall@1": round(sum(_recall(rk, g, 1) for rk, g in zip(ranks, golds, strict=True)) / len(multi), 4),
                "retriever_recall@3": round(sum(_recall(rk, g, 3) for rk, g in zip(ranks, golds, strict=True)) / len(multi), 4),
                "bm25_recall@1": round(sum(_recall(rk, g, 1) for rk, g in zip(bm25, golds, strict=True)) / len(multi), 4),
                "bm25_recall@3": round(sum(_recall(rk, g, 3) for rk, g in zip(bm25, golds, strict=True)) / len(multi), 4),
            }
        if "irrelevance" in stem:
            entry["no_call_accuracy"] = entry["accuracy"]
        else:
            entry["gate_refused"] = sum(str(r.get("no_call_reason") or "").startswith("no tool is relevant") for r in rows)
        entry["error_classes"] = error_table(rows)
        results["categories"][category] = entry
        if out_dir is not None:
            raw_out = out_dir / f"BFCL_v4_{stem}_result.json"
            raw_out.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
        log(_line(category, entry))
    cats = [v for v in results["categories"].values() if v["accuracy"] is not None]
    total = sum(v["n"] for v in cats)
    results["overall"] = {
        "accuracy_unweighted": round(sum(v["accuracy"] for v in cats) / len(cats), 4) if cats else None,
        "accuracy_weighted": round(sum(v["correct"] for v in cats) / total, 4) if total else None,
        "n": total,
    }
    if out_dir is not None:
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _skipped_ids(report, order: list[str]) -> list[tuple[str, str]]:
    """(record id, reason) for each record the loader rejected (its position is 1-based in the file)."""
    out = []
    for position, reason in report.errors:
        rec_id = order[position - 1] if 0 < position <= len(order) else f"line {position}"
        out.append((rec_id, reason))
    return out


def _line(category: str, entry: dict[str, Any]) -> str:
    text = f"{category:>22}: {entry['accuracy']:.2%}  ({entry['correct']}/{entry['n']}, errors {entry['errors']}, no-call {entry['no_call']})"
    if "retrieval" in entry:
        ret = entry["retrieval"]
        text += (f"  recall@1 {ret['retriever_recall@1']:.3f} / @3 {ret['retriever_recall@3']:.3f}"
                 f"  BM25 @1 {ret['bm25_recall@1']:.3f} / @3 {ret['bm25_recall@3']:.3f}")
    return text


def compare_retrievers(
    encoder,
    retrievers: dict[str, Any],
    categories: list[str] | tuple[str, ...] = ("multiple", "parallel_multiple"),
    limit: int | None = None,
    batch_size: int = 32,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Retrieval only, several retrievers in one run: recall@1 / @3 (and R-precision: recall in
    the top g for g gold functions) of each example's gold functions among its own candidates
    (examples with more than one tool), for each retriever and for BM25, on the same intent
    vectors (computed once). With a retriever's relevance
    threshold, also `gate_pass`: the share of questions whose best candidate clears it (all
    questions of the category; on a no-call category such as irrelevance lower is right)."""
    import torch

    from hyfunc.data.loaders import load_bfcl_category

    out: dict[str, Any] = {}
    for category, stem in resolve_categories(categories):
        examples, _report = load_bfcl_category(stem, progress=False, check_answers=False)
        if limit:
            examples = examples[:limit]
        if not examples:
            continue
        multi = [i for i, ex in enumerate(examples) if len(ex.tools) > 1 and ex.answers]
        tools = list({t.content_hash(): t for ex in examples for t in ex.tools}.values())
        row = {t.content_hash(): i for i, t in enumerate(tools)}
        with torch.inference_mode():
            queries = torch.cat([encoder.soft_tokens([ex.query for ex in examples[s : s + batch_size]]).soft_tokens
                                 for s in range(0, len(examples), batch_size)])
            keys = encoder.function_embeddings(tools)
        golds = [{c.name for c in examples[i].answers} for i in multi]
        entry: dict[str, Any] = {"examples": len(multi), "questions": len(examples)}
        rankings: dict[str, list[list[str]]] = {}
        for label, retriever in retrievers.items():
            with torch.inference_mode():
                q = retriever.encode_queries(queries)
                k = retriever.encode_keys(keys)
            scores = [k[[row[t.content_hash()] for t in ex.tools]] @ q[i] for i, ex in enumerate(examples)]
            rankings[label] = [
                [examples[i].tools[j].name for j in torch.argsort(scores[i], descending=True, stable=True).tolist()]
                for i in multi
            ]
            threshold = (thresholds or {}).get(label)
            if threshold is not None:
                passed = sum(float(sc.max()) >= threshold for sc in scores)
                entry.setdefault("gate_pass", {})[label] = round(passed / len(examples), 4)
        ranker = BM25Ranker([t for ex in examples for t in ex.tools])
        rankings["bm25"] = [[examples[i].tools[j].name for j in ranker.rank(examples[i].query, examples[i].tools)] for i in multi]
        if multi:
            for label, ranked in rankings.items():
                entry[label] = {
                    f"recall@{k}": round(sum(_recall(rk, g, k) for rk, g in zip(ranked, golds, strict=True)) / len(multi), 4)
                    for k in (1, 3)
                }
                # recall@1 of a question with g gold functions is at most 1/g; R-precision looks at the top g
                entry[label]["r_precision"] = round(
                    sum(_recall(rk, g, len(g)) for rk, g in zip(ranked, golds, strict=True)) / len(multi), 4)
        out[category] = entry
    return out
