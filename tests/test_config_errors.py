"""Bad configuration: exit status 2, and a message naming the file, the key path and the problem."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import healer_cli, write_config


def run(cfg: Path, *extra: str) -> tuple[int, str]:
    p = healer_cli("run", "-c", str(cfg), *extra, timeout=20)
    return p.returncode, p.stderr


def test_missing_file(tmp_path: Path) -> None:
    code, err = run(tmp_path / "nope.yaml")
    assert code == 2
    assert f"{tmp_path / 'nope.yaml'}" in err and "file not found" in err


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("state_dir: s\npolicies_dir: p\ncomponents:\n  a: {probes: [\n")
    code, err = run(cfg)
    assert code == 2
    assert f"{cfg}:5:1: malformed YAML" in err


def test_invalid_value_names_key_path_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "state_dir: s\npolicies_dir: p\ncomponents:\n  a:\n    probes:\n"
        "      - type: http\n        url: http://127.0.0.1:1/\n        interval: 5x\n"
    )
    code, err = run(cfg)
    assert code == 2
    assert f"{cfg}:8:9: components.a.probes[0].interval: expected a duration" in err


def test_unknown_probe_type_suggests_the_right_one(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("state_dir: s\npolicies_dir: p\ncomponents:\n  a:\n    probes:\n      - type: htp\n")
    code, err = run(cfg)
    assert code == 2
    assert "components.a.probes[0].type: unknown probe type 'htp' (did you mean 'http'?)" in err


def test_missing_required_key_and_unknown_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("state_dir: s\nstate_dri: t\n")
    code, err = run(cfg)
    assert code == 2
    assert "policies_dir: Field required" in err
    assert f"{cfg}:2:1: state_dri: Extra inputs are not permitted" in err


def test_bad_component_name_and_unknown_dependency(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "state_dir: s\npolicies_dir: p\ncomponents:\n  ok:\n    depends_on: [ghost]\n  ../evil: {}\n"
    )
    code, err = run(cfg)
    assert code == 2
    assert "invalid name '../evil'" in err
    cfg.write_text("state_dir: s\npolicies_dir: p\ncomponents:\n  ok:\n    depends_on: [ghost]\n")
    code, err = run(cfg)
    assert code == 2
    assert f"{cfg}:5:18: components.ok.depends_on[0]: unknown component 'ghost'" in err


def test_dependency_cycle_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "state_dir: s\npolicies_dir: p\ncomponents:\n"
        "  a: {depends_on: [b]}\n  b: {depends_on: [c]}\n  c: {depends_on: [a]}\n"
    )
    code, err = run(cfg)
    assert code == 2
    assert "dependency cycle: a -> b -> c -> a" in err


def test_environment_override_wins_and_is_named_when_invalid(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "")
    import os
    import subprocess
    import sys

    env = {**os.environ, "HEALER_LOG_LEVEL": "loud"}
    p = subprocess.run(
        [sys.executable, "-m", "healer", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert p.returncode == 2
    assert "log_level" in p.stderr and "(value from environment HEALER_LOG_LEVEL)" in p.stderr


def test_the_example_config_is_valid() -> None:
    from healer.cli import load_checked_config

    root = Path(__file__).resolve().parent.parent
    cfg = load_checked_config(root / "config" / "healer.example.yaml")
    assert set(cfg.components) == {"vector-db", "planner"}
    assert cfg.components["planner"].depends_on == ["vector-db"]
    assert cfg.state_dir == (root / "state" / "example").resolve()
