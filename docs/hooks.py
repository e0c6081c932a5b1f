"""mkdocs hooks of the documentation site (mkdocs.yml names this file; it is not a page).

- The build fails when a generated reference (options, hooks) is out of date, so the site
  cannot document options the program does not have, or miss one it has.
- Folders of the repository outside docs/ that the pages link to (``MOUNTS``) are part of the
  site under the same name, and links into them are rewritten for the site: the same Markdown
  links work on GitHub (``../dataset_examples/audio.md`` from docs/audio.md) and in the site.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

from any2ds import docs

REPOSITORY = Path(__file__).resolve().parent.parent
DOCS = "docs"
# Repository folders served by the site under their own name.
MOUNTS = ("dataset_examples",)
# An inline Markdown link's target: [text](target) or [text](target "title").
_LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(?=[)\s])")


def on_pre_build(config, **kwargs):
    paths = [REPOSITORY / reference.path for reference in docs.REFERENCES]
    if stale := docs.stale(paths):
        names = " ".join(str(path.relative_to(REPOSITORY)) for path in stale)
        raise PluginError(f"generated documentation out of date in {names}: run python -m any2ds.docs")


def on_files(files, config, **kwargs):
    for mount in MOUNTS:
        for path in sorted((REPOSITORY / mount).rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.parts):
                files.append(File.generated(config, path.relative_to(REPOSITORY).as_posix(), abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, **kwargs):
    """Links written between repository paths, rewritten between site paths where they differ."""
    page_uri = page.file.src_uri
    page_folder = posixpath.dirname(_repository_path(page_uri))

    def site_link(match: re.Match) -> str:
        target = match[2]
        if "://" in target or target.startswith(("/", "mailto:")):
            return match[0]
        site_path = _site_path(posixpath.normpath(posixpath.join(page_folder, target)))
        if site_path is None:
            return match[0]  # outside the site: mkdocs reports it
        link = posixpath.relpath(site_path, posixpath.dirname(page_uri) or ".")
        return match[0] if link == posixpath.normpath(target) else f"{match[1]}{link}{match[3] or ''}"

    return _LINK.sub(site_link, markdown)


def _repository_path(site_path: str) -> str:
    """Where a file of the site is in the repository."""
    return site_path if site_path.split("/", 1)[0] in MOUNTS else f"{DOCS}/{site_path}"


def _site_path(repository_path: str) -> str | None:
    """Where a repository file is in the site, or None when the site does not hold it."""
    top, _, rest = repository_path.partition("/")
    if top == DOCS:
        return rest
    return repository_path if top in MOUNTS else None
