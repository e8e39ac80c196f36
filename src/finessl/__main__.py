import sys

from finessl.cli import main

sys.exit(main())
