"""`python -m app`: see app.main.main."""

import sys

from app.main import main

sys.exit(main())
