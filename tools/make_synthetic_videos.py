"""Generate the built-in synthetic video dataset (see ``--help``)."""
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec('mmmultigrid') is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmmultigrid.data.synthetic_videos import main  # noqa: E402

if __name__ == '__main__':
    main()
