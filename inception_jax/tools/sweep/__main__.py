import sys

from inception_jax.tools.sweep.cli import main

sys.exit(main())
