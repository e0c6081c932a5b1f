"""``python -m any2ds`` and the ``any2ds`` command (its entry point is :func:`main`).

The command's script imports its entry point, and multiprocessing's spawn runs that script again
in every worker: this module imports the CLI (with jsonargparse and yaml: 4 MB and 60 ms a
worker) only when :func:`main` is called.
"""

import sys


def main() -> int:
    """Run the command line on ``sys.argv``; return its exit code."""
    from any2ds.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
