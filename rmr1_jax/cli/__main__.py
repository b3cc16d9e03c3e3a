import sys

from rmr1_jax.cli import main

sys.exit(main())
