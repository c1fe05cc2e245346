"""`metricner run` under torchrun with rank 1 made to fail at the start of training (for tests/test_distributed.py)."""
import os
import sys

import metricner.experiments

if os.environ.get('RANK') == '1':
    def failing_train_stage(*args, **kwargs): raise RuntimeError('rank 1 fails on purpose')
    metricner.experiments.train_stage = failing_train_stage

from metricner.cli import main

if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
