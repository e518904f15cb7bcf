"""The floors of the house: rollout/, rewards/ and learner/ never import cluster/; between them only the records
and the shared helpers (rollout/records.py, rollout/common.py) cross, and rewards read the protocols' tag
shapes (rollout/protocols/formats.py); the config imports nothing above it (the toy task's settings are part
of its schema); the resume fields are the fields the schema marks."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_lower_floors_never_import_cluster():
    upward = {str(p.relative_to(REPO)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "cluster")
              for floor in ("rollout", "rewards", "learner") for p in (Path(REPO) / floor).rglob("*.py")}
    assert {path: modules for path, modules in upward.items() if modules} == {}


# What each lower floor may import from the others.
ALLOWED = {
    "learner": {"rollout.records", "rollout.common"},
    "rewards": {"rollout.common", "rollout.protocols.formats"},
    "rollout": set(),
}


def test_lower_floors_share_only_records_and_the_common_helpers():
    crossing = {}
    for floor, allowed in ALLOWED.items():
        for path in (Path(REPO) / floor).rglob("*.py"):
            others = {m for m in imported_modules(path) if m.split(".")[0] in ALLOWED and m.split(".")[0] != floor}
            if others - allowed:
                crossing[str(path.relative_to(REPO))] = sorted(others - allowed)
    assert crossing == {}


def test_the_config_imports_nothing_above_it():
    for path in (Path(REPO) / "cluster" / "config").glob("*.py"):
        above = [m for m in imported_modules(path) if m.startswith("cluster.") and not m.startswith("cluster.config")]
        assert above == [], (path.name, above)


def test_resume_fields_are_the_fields_the_schema_marks():
    import dataclasses

    from cluster.checkpoint import LAYOUT_FIELDS, RESUME_FIELDS, resume_fields
    from cluster.config import RunConfig, to_dict

    assert {"rollout.seed", "rollout.protocol", "learner.credit", "data", "reward", "model.warm_start"} <= set(RESUME_FIELDS)
    assert not {"steps", "rollout.max_model_len", "learner.learning_rate", "cluster"} & set(RESUME_FIELDS)
    assert set(LAYOUT_FIELDS) == {"learner.num_ranks", "learner.zero_stage"}
    recorded = resume_fields(to_dict(RunConfig()))
    assert set(recorded) == set(RESUME_FIELDS) | set(LAYOUT_FIELDS)
    assert recorded["rollout.seed"] == 0 and recorded["learner.credit"] == "every_round"
    assert recorded["reward"] == dataclasses.asdict(RunConfig().reward)
