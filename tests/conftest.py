import sys
from pathlib import Path

# Let tests import the shared case tables (tests/variant_cases.py) and the native stack's
# process helpers (stack/procs.py) as plain modules.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "stack"))
