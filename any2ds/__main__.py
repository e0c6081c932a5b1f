import sys

from any2ds.cli import main

sys.exit(main())
