import os
import sys

# Make `models` importable for the test module and for the fresh process the pickle check starts.
sys.path.insert(0, os.path.dirname(__file__))
