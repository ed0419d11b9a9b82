"""The registry: a good file loads; each bad file fails before anything runs, naming file:line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import write_registry
from modelstream import registry
from modelstream.errors import ConfigError, ConfigErrors

GOOD = """
database: {{uri: "${{TEST_URI:-mongodb://127.0.0.1:1}}", name: coco}}
models:
  clip:       {{object: "toymodels:letters", collection: documents, key: img}}
  clip_text:  {{object: clip, key: captions, active: false}}
  projection: {{object: "toymodels:Scale", args: [3.0], key: img, features: {{img: clip}}}}
indexes:
  clip: {{models: [clip, clip_text], measure: cosine}}
"""


def errors_of(tmp_path, body: str) -> list[ConfigError]:
    path = write_registry(tmp_path, body)
    with pytest.raises((ConfigErrors, ConfigError)) as info:
        plan = registry.load(path)
        registry.load_models(plan.registry, plan.versions)
    return getattr(info.value, "errors", [info.value])


def test_good_file_loads(tmp_path, monkeypatch):
    """Shared objects, chains, defaults and env expansion all resolve."""
    monkeypatch.setenv("TEST_URI", "mongodb://example:27017")
    plan = registry.load(write_registry(tmp_path, GOOD))
    reg = plan.registry
    assert reg.database.uri == "mongodb://example:27017"
    assert reg.models["clip_text"].shares == "clip" and reg.models["clip_text"].collection == "documents"
    assert reg.models["projection"].collection is not None
    assert plan.order.index("clip") < plan.order.index("projection")
    assert plan.roots["projection"] == ("img",)
    models = registry.load_models(reg, plan.versions)
    assert models["clip"].obj is models["clip_text"].obj


def test_env_default_used_when_unset(tmp_path, monkeypatch):
    """${VAR:-default} falls back to the default."""
    monkeypatch.delenv("TEST_URI", raising=False)
    assert registry.load(write_registry(tmp_path, GOOD)).registry.database.uri == "mongodb://127.0.0.1:1"


def test_unset_env_without_default(tmp_path, monkeypatch):
    """${VAR} with VAR unset names the variable and the line."""
    monkeypatch.delenv("NOPE_URI", raising=False)
    [error] = errors_of(tmp_path, "database:\n  uri: ${{NOPE_URI}}\n")
    assert error.line == 2 and "NOPE_URI" in str(error)


def test_unknown_key_with_suggestion(tmp_path):
    """A misspelt key names its line and suggests the right one."""
    [error] = errors_of(tmp_path, "models:\n  m:\n    object: toymodels:letters\n    key: t\n"
                                  "    collection: c\n    batchsize: 3\n")
    assert error.line == 6 and "batchsize" in str(error) and "batch_size" in str(error)
    assert str(error).startswith(str(tmp_path / "registry.yaml") + ":6:")


def test_wrong_type(tmp_path):
    """A wrong type says what was expected."""
    [error] = errors_of(tmp_path, "models:\n  m: {{object: 'toymodels:letters', key: t, collection: c, "
                                  "batch_size: many}}\n")
    assert error.line == 2 and "batch_size must be int" in str(error)


def test_unknown_model_references(tmp_path):
    """features, shared objects and index entries that name no model are each reported."""
    errors = errors_of(tmp_path, """
models:
  a: {{object: "toymodels:letters", key: t, collection: c, features: {{t: nope}}}}
  b: {{object: clipp, key: t}}
indexes:
  i: {{models: [a, ghost]}}
""")
    text = "\n".join(map(str, errors))
    assert "'nope'" in text and "'clipp'" in text and "'ghost'" in text
    assert sorted(e.line for e in errors) == [3, 4, 6]


def test_cycle_names_the_models(tmp_path):
    """A features cycle is an error naming every model in it."""
    [error] = errors_of(tmp_path, """
models:
  a: {{object: "toymodels:letters", key: t, collection: c, features: {{t: b}}}}
  b: {{object: "toymodels:letters", key: t, collection: c, features: {{t: a}}}}
""")
    assert "cycle" in str(error) and "a -> b -> a" in str(error)


def test_import_failure_names_the_model_line(tmp_path):
    """An object that cannot be imported is reported at its model's line, with the reason."""
    [error] = errors_of(tmp_path, "models:\n  ok: {{object: 'toymodels:letters', key: t, collection: c}}\n"
                                  "  broken: {{object: 'no_such_module:Thing', key: t, collection: c}}\n")
    assert error.line == 3 and "no_such_module" in str(error) and "ModuleNotFoundError" in str(error)


def test_bad_yaml_syntax(tmp_path):
    """A YAML syntax error points at its line."""
    [error] = errors_of(tmp_path, "models:\n  a: {{object: [unclosed\n")
    assert error.line is not None and "invalid YAML" in str(error)


def test_bad_choice(tmp_path):
    """An index measure outside the known ones lists the choices."""
    [error] = errors_of(tmp_path, "models:\n  a: {{object: 'toymodels:letters', key: t, collection: c}}\n"
                                  "indexes:\n  i: {{models: [a], measure: cosinus}}\n")
    assert error.line == 4 and "cosine" in str(error)


def test_check_command_exit_codes(tmp_path):
    """`modelstream check` exits 0 on a good file and 2 with file:line on a bad one."""
    good = write_registry(tmp_path, GOOD)
    env_py = {"PYTHONPATH": str(tmp_path.parent)}
    ok = subprocess.run([sys.executable, "-m", "modelstream", "check", "-c", str(good)], capture_output=True,
                        text=True, cwd=str(__import__("conftest").TESTS), env={**__import__("os").environ, **env_py})
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  a: {object: x, key: t, collection: c}\n")
    result = subprocess.run([sys.executable, "-m", "modelstream", "check", "-c", str(bad)], capture_output=True,
                            text=True)
    assert result.returncode == 2 and f"{bad}:2:" in result.stderr


def test_mapping_as_key_is_a_config_error(tmp_path):
    """A mapping used as a key (a stray brace) names its line instead of crashing."""
    [error] = errors_of(tmp_path, "models:\n  {{a: 1}}: {{object: x}}\n")
    assert error.line == 2 and "plain name" in str(error)


def test_api_limits_are_checked(tmp_path):
    """api.request_timeout_s defaults to 30 s; a limit that is not a positive number names its line."""
    models = "models:\n  a: {{object: 'toymodels:letters', key: t, collection: c}}\n"
    assert registry.load(write_registry(tmp_path, models)).registry.api.request_timeout_s == 30.0
    errors = errors_of(tmp_path, models + "api:\n  request_timeout_s: 0\n  idle_timeout_s: soon\n")
    by_line = {e.line: str(e) for e in errors}
    assert "api.request_timeout_s must be positive" in by_line[4]
    assert "api.idle_timeout_s must be int or float" in by_line[5]
