import sys

from hailan_sim.cli import main

sys.exit(main())
