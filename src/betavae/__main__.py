import sys

from betavae.cli import main

sys.exit(main())
