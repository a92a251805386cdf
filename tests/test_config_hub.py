"""Every shipped recipe parses against the real class signatures, and has the header a user needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from recipes import CONFIGS_DIR
from recipes.__main__ import main
from tests.conftest import NEWS16

RECIPES = sorted(CONFIGS_DIR.glob("*.yaml"))
HEADER_LINES = ("How to run:", "What must run first:")


def test_every_shipped_recipe_is_found() -> None:
    # the parametrized tests below would pass vacuously over an empty glob (e.g. after the YAMLs move again)
    assert len(RECIPES) >= 13 and not list(CONFIGS_DIR.parent.glob("*.yaml")), RECIPES


def subcommand_for(recipe: Path) -> str:
    first = recipe.read_text("utf-8").splitlines()[0]
    return "sweep" if "sweep" in first.split(":")[0] else "fit"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_against_real_signatures(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if subcommand_for(recipe) == "sweep":
        # the sweep schema, then the training recipe it names with its overrides at every end of the search space
        assert main(["sweep", "--config", recipe.name, "--dry_run"]) == 0, capsys.readouterr().err
        assert "training config: parses at every end of the search space" in capsys.readouterr().out
        return
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", recipe.name, "--print_config"])
    assert info.value.code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "class_path: lightning_modules." in printed


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_has_a_comment_header(recipe: Path) -> None:
    header = [line for line in recipe.read_text("utf-8").splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert header and recipe.read_text("utf-8").startswith(f"# {recipe.stem}")
    for needed in HEADER_LINES:
        assert needed in text, f"{recipe.name} header lacks '{needed}'"


def test_unknown_key_and_wrong_type_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fit", "--config", "news16_cpu.yaml", "--model.init_args.learning_rat", "0.1", "--print_config"])
    assert code == 2
    assert "unknown config key 'model.init_args.learning_rat'" in capsys.readouterr().err
    code = main(["fit", "--config", "news16_cpu.yaml", "--data.init_args.batch_size", "many", "--print_config"])
    assert code == 2
    assert "wrong type for 'data.init_args.batch_size'" in capsys.readouterr().err


def test_linked_values_are_not_typed_twice() -> None:
    for recipe in RECIPES:
        text = recipe.read_text("utf-8")
        model_part = text.split("\nmodel:")[1].split("\ndata:")[0] if "\nmodel:" in text else ""
        for linked in ("max_length:", "label_names:", "tokenizer:"):
            assert linked not in model_part, f"{recipe.name}: model.{linked} is linked from data, do not set it"


def test_help_documents_every_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "lightning_modules.TextClassifier"])
    out = capsys.readouterr().out
    for argument in ("--model.pretrained", "--model.dropout", "--model.learning_rate", "--model.architecture"):
        assert argument in out
    assert "Peak AdamW learning rate" in out


def label_lists(node: Any) -> list[tuple[str, list[str]]]:
    """Every (train_file, labels) pair a recipe's YAML sets, at any depth (pretraining nests its data sources)."""
    if isinstance(node, list):
        return [pair for item in node for pair in label_lists(item)]
    if not isinstance(node, dict):
        return []
    found = [(str(node["train_file"]), list(node["labels"]))] if "train_file" in node and "labels" in node else []
    return found + [pair for value in node.values() for pair in label_lists(value)]


def test_label_lists_copied_across_recipes_agree() -> None:
    """Recipes that read the same corpus copy its label list (a teacher's labels must equal its student's): every
    copy is the same list in the same order, and news16's is the 16 NLPCC classes the tests use."""
    by_corpus: dict[str, dict[tuple[str, ...], list[str]]] = {}
    for recipe in RECIPES:
        for train_file, labels in label_lists(yaml.safe_load(recipe.read_text("utf-8"))):
            by_corpus.setdefault(train_file, {}).setdefault(tuple(labels), []).append(recipe.name)
    assert by_corpus, "no recipe sets data labels"
    for train_file, variants in by_corpus.items():
        assert len(variants) == 1, f"{train_file}: recipes disagree on its labels: {variants}"
    assert list(next(iter(by_corpus["nlpcc2017/headlines.char.tsv"]))) == NEWS16


def test_second_round_recipe_is_the_first_round_plus_its_student_as_teacher() -> None:
    """thucnews10_born_again_cpu.yaml is thucnews10_distill_cpu.yaml with the first round's student added to its
    teachers and its own run name: a change to one recipe that is not made to the other fails here."""
    first, second = (yaml.safe_load((CONFIGS_DIR / f"thucnews10_{name}_cpu.yaml").read_text("utf-8"))
                     for name in ("distill", "born_again"))
    added = second["model"]["init_args"]["teachers"].pop()
    assert added == {"class_path": "lightning_modules.CheckpointTeacher",
                     "init_args": {"checkpoint": "tb_logs/thucnews10_distill_cpu/latest/best.ckpt", "weight": 2.0,
                                   "calibrate": True}}
    assert first["trainer"]["logger"]["init_args"].pop("name") == "thucnews10_distill_cpu"
    assert second["trainer"]["logger"]["init_args"].pop("name") == "thucnews10_born_again_cpu"
    assert second == first
