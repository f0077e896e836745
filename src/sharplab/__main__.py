import sys

from sharplab.cli import main

sys.exit(main())
