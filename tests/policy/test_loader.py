"""Loading policy files: errors with file:line, includes, pins and digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from guardrail.errors import PolicyError
from guardrail.policy.loader import check_policy_file, load_policy, load_policy_text


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_first_version_file_loads(policies_dir: Path) -> None:
    path = policies_dir / "support-agent.yaml"
    policy = load_policy(path)

    assert policy.name == "support-agent"
    assert policy.mode == "enforce"
    assert policy.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert policy.line_of("tools", "refund_order", "arguments", "amount") == 14


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("policy: x\ntools:\n  a:\n    alow: true\n", 4, "Did you mean 'allow'"),
        (
            "policy: x\nrules:\n  - id: r\n    effect: permit\n    tool: [a]\n",
            5,
            "Did you mean 'tools'",
        ),
        (
            "policy: x\nbudgets:\n  - id: b\n    tools: [a]\n    max: -1\n",
            5,
            "greater than or equal to 0",
        ),
        (
            "policy: x\nrules:\n  - id: r\n    effect: allow\n    tools: [a]\n",
            4,
            "'permit' or 'forbid'",
        ),
        (
            "policy: x\nrules:\n  - id: r\n    effect: permit\n    tools: [a]\n"
            "    when: 'step >'\n",
            6,
            "invalid CEL",
        ),
        (
            "policy: x\nrules:\n  - id: r\n    effect: permit\n    tools: [a]\n"
            "    when: 'stepp > 1'\n",
            6,
            "Did you mean 'step'",
        ),
        (
            "policy: x\nrules:\n  - id: r\n    effect: permit\n"
            "    tools: ['group:web']\n",
            5,
            "unknown group 'web'",
        ),
        (
            "policy: x\nrules:\n  - id: r\n    effect: forbid\n    tools: [a]\n"
            "    arguments: {x: {maxLength: 1}}\n",
            3,
            "forbids, so arguments",
        ),
        (
            "policy: x\ntools:\n  a:\n    allow: true\n    arguments:\n"
            "      x: {maxLenght: 3}\n",
            6,
            "not a known keyword",
        ),
        (
            "policy: x\ntools:\n  a:\n    allow: true\n    allow_lists:\n"
            "      url: {urls: ['https://user@example.com']}\n",
            6,
            "invalid URL allow-list entry",
        ),
        (
            "policy: x\ntools:\n  a:\n    allow: true\n    allow_lists:\n"
            "      url: {urls: ['https://a.example'], email_domains: [b.example]}\n",
            6,
            "exactly one",
        ),
        (
            "policy: x\ntools:\n  a: {allow: true}\nrules:\n"
            "  - {id: tools.a, effect: forbid, tools: [a]}\n",
            5,
            "already used",
        ),
    ],
)
def test_problem_points_at_its_line(text: str, line: int, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as raised:
        load_policy_text(text, source="p.yaml")

    assert raised.value.line == line
    assert raised.value.source == "p.yaml"


def test_check_collects_every_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        "policy: x\nrules:\n"
        "  - {id: a, effect: permit, tools: [t], when: 'nope'}\n"
        "  - {id: b, effect: permit, tools: [t], when: 'step >'}\n",
    )
    policy, problems = check_policy_file(path)

    assert policy is None
    assert [problem.line for problem in problems] == [3, 4]


def test_include_merges_fragment_rules(tmp_path: Path) -> None:
    write(
        tmp_path,
        "shared/base.yaml",
        "rules:\n  - {id: base.no-delete, effect: forbid, tools: ['delete_*']}\n",
    )
    top = write(
        tmp_path,
        "agent.yaml",
        "policy: agent\ninclude: [shared/base.yaml]\ntools: {search: {allow: true}}\n",
    )
    policy = load_policy(top)
    compiled = policy.compiled()

    assert [rule.id for rule in compiled.rules] == ["base.no-delete", "tools.search"]
    assert compiled.item("base.no-delete").source.endswith("base.yaml")
    assert compiled.item("base.no-delete").line == 2
    assert len(policy.files) == 2


def test_include_changes_the_policy_digest(tmp_path: Path) -> None:
    fragment = write(tmp_path, "f.yaml", "groups: {web: ['web_*']}\n")
    top = write(tmp_path, "p.yaml", "policy: p\ninclude: [f.yaml]\n")
    first = load_policy(top).sha256

    fragment.write_text("groups: {web: ['browse_*']}\n", encoding="utf-8")
    second = load_policy(top).sha256

    assert first != second
    assert first != hashlib.sha256(top.read_bytes()).hexdigest()


def test_include_pin_mismatch_is_rejected(tmp_path: Path) -> None:
    write(tmp_path, "f.yaml", "groups: {web: ['web_*']}\n")
    top = write(
        tmp_path,
        "p.yaml",
        "policy: p\ninclude:\n  - path: f.yaml\n    sha256: '" + "0" * 64 + "'\n",
    )

    with pytest.raises(PolicyError, match="pins 0000") as raised:
        load_policy(top)
    assert raised.value.line == 3


def test_include_pin_match_loads(tmp_path: Path) -> None:
    fragment = write(tmp_path, "f.yaml", "groups: {web: ['web_*']}\n")
    pin = hashlib.sha256(fragment.read_bytes()).hexdigest()
    top = write(
        tmp_path,
        "p.yaml",
        f"policy: p\ninclude:\n  - path: f.yaml\n    sha256: {pin}\n",
    )

    assert load_policy(top).compiled().groups["web"].patterns == ("web_*",)


def test_include_cycle_is_rejected(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "include: [b.yaml]\n")
    write(tmp_path, "b.yaml", "include: [a.yaml]\n")
    top = write(tmp_path, "p.yaml", "policy: p\ninclude: [a.yaml]\n")

    with pytest.raises(PolicyError, match="include cycle"):
        load_policy(top)


def test_missing_include_names_the_path(tmp_path: Path) -> None:
    top = write(tmp_path, "p.yaml", "policy: p\ninclude: [nope.yaml]\n")

    with pytest.raises(PolicyError, match=r"cannot read included file 'nope\.yaml'"):
        load_policy(top)


def test_fragment_cannot_change_the_default(tmp_path: Path) -> None:
    write(tmp_path, "f.yaml", "default: allow\n")
    top = write(tmp_path, "p.yaml", "policy: p\ninclude: [f.yaml]\n")

    with pytest.raises(PolicyError, match="sets default: allow"):
        load_policy(top)


def test_fragment_ids_must_not_clash(tmp_path: Path) -> None:
    write(tmp_path, "f.yaml", "rules:\n  - {id: r, effect: forbid, tools: [a]}\n")
    top = write(
        tmp_path,
        "p.yaml",
        "policy: p\ninclude: [f.yaml]\n"
        "rules:\n  - {id: r, effect: permit, tools: [a]}\n",
    )

    with pytest.raises(PolicyError, match="id 'r' is already used"):
        load_policy(top)


def test_policy_is_compiled_once_at_load(tmp_path: Path) -> None:
    top = write(tmp_path, "p.yaml", "policy: p\ntools: {a: {allow: true}}\n")
    policy = load_policy(top)

    assert policy.compiled() is policy.compiled()
