import sys
from pathlib import Path

# Make tests/reference.py importable as `reference` however pytest is invoked.
sys.path.insert(0, str(Path(__file__).parent))
