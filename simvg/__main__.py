import sys

from simvg.cli import main

sys.exit(main())
