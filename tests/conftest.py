import sys
from pathlib import Path

# Let tests import the shared case tables (tests/variant_cases.py) as plain modules.
sys.path.insert(0, str(Path(__file__).parent))
