"""Extract the frames of a VideoDataset for RawframeDataset, with smaller copies (see ``--help``).

Example (the copies a multigrid config's grid shapes need)::

    python tools/extract_frames.py data/kinetics400/kinetics400_train_list_videos.txt \
        data/kinetics400/videos_train data/kinetics400/rawframes_train \
        --config configs/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb_multigrid.py
"""
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec('mmmultigrid') is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmmultigrid  # noqa: E402,F401  (stack fixes before mmengine configs load)
from mmmultigrid.data.rawframes import main  # noqa: E402

if __name__ == '__main__':
    main()
