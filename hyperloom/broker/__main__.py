import sys

from ..cli import broker_main

sys.exit(broker_main())
