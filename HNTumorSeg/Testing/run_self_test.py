"""Run HNTumorSegTest inside Slicer and exit with its status (for CI, no extension build needed).

    "$SLICER_EXECUTABLE" --no-splash --no-main-window \
        --additional-module-paths "$PWD/HNTumorSeg" --python-script "$PWD/HNTumorSeg/Testing/run_self_test.py"

Slicer's Python needs torch (the PyTorch extension, or ``PythonSlicer -m pip install torch``) and
safetensors; the test installs what is missing without asking. HNTUMORSEG_TEST_MODEL=path/to/model.json
selects another model than the bundled one.
"""

import traceback

import slicer

status = 1
try:
    import HNTumorSeg

    HNTumorSeg.HNTumorSegTest().runTest()
    print("HNTumorSegTest: passed")
    status = 0
except Exception:
    traceback.print_exc()
    print("HNTumorSegTest: FAILED")
slicer.util.exit(status)
