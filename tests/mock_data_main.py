"""`python tests/mock_data_main.py [main's flags]`: the trainer's command line over `tfds.testing.mock_data`.

For subprocess tests that need a dataset without exact ties: mock images are random noise, so max
pools never see equal maxima, and runs that differ only in float rounding (another device or process
count) stay within rounding of each other instead of routing gradients through different tied maxima.
`MOCK_EXAMPLES` sets the split size (default 64).
"""

import os
import sys

import tensorflow_datasets as tfds

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from inception_jax import main

    with tfds.testing.mock_data(num_examples=int(os.environ.get("MOCK_EXAMPLES", "64"))):
        main.run()
