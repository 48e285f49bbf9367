import sys

from medunet.cli import main

sys.exit(main())
