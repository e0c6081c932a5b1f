"""docs/plugins.md: its hook reference is generated from the hookspec docstrings and current,
and its guide names every hook."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest
from packaging.version import Version

from any2ds import docs, hookspecs

PLUGINS_MD = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


@pytest.mark.parametrize("hook", docs.hook_specs(), ids=lambda f: f.__name__)
def test_every_hook_says_in_which_hookspec_version_it_was_added(hook):
    added = re.search(r"^\.\. versionadded:: (\S+)$", inspect.getdoc(hook) or "", re.MULTILINE)
    assert added and Version(added[1]) <= Version(hookspecs.HOOKSPEC_VERSION)


def test_the_generated_reference_is_up_to_date():
    assert docs.stale([PLUGINS_MD]) == {}, "run: python -m any2ds.docs"


def test_the_guide_names_every_hook_outside_the_generated_reference():
    guide = PLUGINS_MD.read_text().split(docs.HOOKS.begin)[0]
    assert [hook.__name__ for hook in docs.hook_specs() if hook.__name__ not in guide] == []


def test_a_hook_without_a_docstring_cannot_be_documented():
    module = types.ModuleType("fake_hookspecs")
    module.HOOKSPEC_VERSION = "1.0"

    @hookspecs.hookspec
    def any2ds_register_widgets(register):
        pass

    module.any2ds_register_widgets = any2ds_register_widgets
    with pytest.raises(ValueError, match="hook any2ds_register_widgets has no docstring"):
        docs.hook_reference(module)


def test_the_generator_rewrites_only_its_section_and_check_reports_staleness(tmp_path):
    stale = tmp_path / "plugins.md"
    begin, end = docs.HOOKS.begin, docs.HOOKS.end
    stale.write_text(f"# Guide\n\n{begin}\nold\n{end}\nafter\n")
    assert docs.main(["--check", str(stale)]) == 1
    assert docs.main([str(stale)]) == 0
    assert stale.read_text() == f"# Guide\n\n{begin}\n\n{docs.hook_reference()}\n\n{end}\nafter\n"
    assert docs.main(["--check", str(stale)]) == 0


def test_the_reference_renders_docstring_fields_as_markdown():
    reference = docs.hook_reference()
    assert "### `any2ds_register_readers(register)`" in reference
    assert "- `register`: call `register(ReaderClass)` once per reader. The reader's `name` is" in reference
    assert "*Added in hook spec 1.0.*" in reference and ":param" not in reference and "``" not in reference
