"""Test set-up shared by every test file."""

import os
import sys

# Repository root on the path so `terse_tf` imports without an install; quiet TF start-up logs.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
