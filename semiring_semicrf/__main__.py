"""`python -m semiring_semicrf`: the `semicrf` command line."""
from .cli import main

raise SystemExit(main())
