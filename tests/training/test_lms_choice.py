"""`hyfunc train compare-lms`: variants parse, apply to a recipe and fail early on bad keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyfunc.bench.lms_choice import LMSVariant, apply_variant, markdown, parse_variant
from hyfunc.training.pipeline import Recipe


def test_a_variant_is_a_name_and_yaml_overrides() -> None:
    assert parse_variant("smollm2:") == LMSVariant("smollm2", {})
    variant = parse_variant("top8:lms.lora_layers=8, lms.bf16=false ,lms_init=base:gemma3-270m")
    assert variant.overrides == {"lms.lora_layers": 8, "lms.bf16": False, "lms_init": "base:gemma3-270m"}
    for bad in ("", ":lms.bf16=false", "a b:", "x:lms.bf16"):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_a_variant_changes_only_what_it_names(tmp_path: Path) -> None:
    recipe = Recipe(lms_init="base:smollm2-135m-instruct")
    varied = apply_variant(recipe, parse_variant("top8:lms.lora_layers=8,lms.bf16=false"), tmp_path)
    assert varied.lms.lora_layers == 8 and varied.lms.bf16 is False
    assert varied.lms.lr == recipe.lms.lr and varied.lms_init == recipe.lms_init
    assert varied.work_dir == str(tmp_path / "compare-top8") and varied.out_dir == str(tmp_path / "compare-top8" / "models")
    assert recipe.lms.lora_layers is None  # the recipe itself is untouched
    with pytest.raises(ValueError, match="unknown LMS training key"):
        apply_variant(recipe, parse_variant("x:lms.nope=1"), tmp_path)
    with pytest.raises(ValueError, match="cannot vary"):
        apply_variant(recipe, parse_variant("x:data=demo"), tmp_path)


def test_the_table_has_a_row_per_variant() -> None:
    row = {"variant": "smollm2", "overrides": {}, "seconds_per_step": 5.1, "final_loss": 0.4, "demo_exact": 0.5,
           "demo_function": 0.8, "demo_false_no_call": 3, "seal_exact": 0.4, "adapter_mb": 19.6}
    table = markdown({"demo_n": 100, "seal_limit": 50, "rows": [row, {**row, "variant": "top8", "overrides": {"lms.lora_layers": 8}}]})
    lines = table.strip().splitlines()
    assert len(lines) == 4 and "Seal in-domain exact (first 50)" in lines[0]
    assert "| top8 | lms.lora_layers=8 | 5.1 |" in lines[3]
