import sys

from pgkit.cli import main

sys.exit(main())
