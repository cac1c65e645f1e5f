import sys

from benchop.cli import main

sys.exit(main())
