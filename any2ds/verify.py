"""``any2ds verify OUTPUT``: check a dataset, or a copy of it, against what the run recorded.

Every ``<shard>_stats.json`` lists the sha256 of each file of its shard; the run summary lists
every shard's digest of those (:func:`any2ds.output.shard_digest`). A copy is sound when every
listed file is there with its sha256 and every shard's stats match the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import attrs

from any2ds.output import SUMMARY_FILE, OutputFolder, file_sha256, shard_digest
from any2ds.storage import STORAGE_ARGUMENT_HELP, Storage, storage_argument

VERIFY_HELP = "Check every file of a finished output (or a copy of it) against the sha256 the run recorded."


@attrs.frozen
class Verification:
    """What ``any2ds verify`` found: files checked, and every problem as one line."""

    files: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_output(url: str, storage: Storage = Storage()) -> Verification:
    """Recompute the sha256 of every file the shards' stats list and compare with the records
    (the folder reached with ``storage``'s options). A record that does not parse is a problem
    of its own, not an error."""
    output = OutputFolder(url, oom_shard_count=1, storage=storage)
    problems = []
    checked = 0
    try:
        manifest = (output.read_json(SUMMARY_FILE) or {}).get("manifest", {})
    except (ValueError, AttributeError):  # not JSON, or not an object
        problems.append(f"{SUMMARY_FILE}: not a run summary (its JSON does not parse as one)")
        manifest = {}
    texts = output.shard_stats_texts()
    stats_by_shard = {shard: stats for shard, text in texts.items() if isinstance(stats := _parsed(text), dict)}
    if not texts and not manifest:
        problems.append(f"{url}: no committed shard (no <shard>_stats.json): not an any2ds output folder")
    for shard in sorted(set(texts) - set(stats_by_shard)):
        problems.append(f"{shard}: its {shard}_stats.json is not a stats file (its JSON does not parse as one)")
    for shard in sorted(set(manifest) - set(texts)):
        problems.append(f"{shard}: in the run summary, but its {shard}_stats.json is missing")
    for shard, stats in stats_by_shard.items():
        files = stats.get("files")
        if files is None:
            problems.append(f"{shard}: its stats list no files (written by an older any2ds)")
            continue
        if shard in manifest and manifest[shard]["sha256"] != shard_digest(files):
            problems.append(f"{shard}: its stats do not match the run summary's manifest")
        for name, expected in files.items():
            path = output.join(name)
            if not output.fs.exists(path):
                problems.append(f"{name}: missing")
                continue
            with output.fs.open(path, "rb") as f:
                if file_sha256(f) != expected:
                    problems.append(f"{name}: sha256 differs from the recorded one")
            checked += 1
    return Verification(checked, problems)


def _parsed(text: bytes) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="any2ds verify", description=VERIFY_HELP)
    parser.add_argument("output", help="The output folder: a local path or any fsspec URL.")
    parser.add_argument("--json", action="store_true", help="Print the result as JSON.")
    parser.add_argument("--storage_options", default="{}", help=STORAGE_ARGUMENT_HELP)
    args = parser.parse_args(list(argv))
    result = verify_output(args.output, storage_argument(args.storage_options))
    if args.json:
        print(json.dumps({"files": result.files, "problems": result.problems}, indent=2))
    else:
        for problem in result.problems:
            print(problem)
        print(f"{result.files} files checked: " + ("all match" if result.ok else f"{len(result.problems)} problem(s)"))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
