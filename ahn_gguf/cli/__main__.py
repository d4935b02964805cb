"""`python -m ahn_gguf.cli ...` = `ahn-gguf ...`."""

import sys

from ahn_gguf.cli import main

sys.exit(main())
