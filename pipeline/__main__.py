import sys

# Before the heavy imports below: a batch-mode job's API process (see
# transforms/api_process.py) then imports the SDK while this one imports Beam.
from transforms import api_process

api_process.prestart(sys.argv[1:])

from pipeline.run import main  # noqa: E402 - after the API process has started

if __name__ == "__main__":
    main()
